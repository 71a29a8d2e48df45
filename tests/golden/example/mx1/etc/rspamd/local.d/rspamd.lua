-- rspamd's own rules on mx1.example.org (local.d/rspamd.lua, read after the package's rules).
-- Rendered by mailsite: change the stack, not this file.

local lua_util = require "lua_util"

-- A user who logged in sends as the envelope's sender alone. smtpd's senders table holds that
-- sender to the user's own addresses but never reads the From: header, the address a reader sees
-- and DMARC aligns with, which dkim_signing then signs: alice could write From: bob of the same
-- domain and have it signed. So the From: header must be one header of one address, the
-- envelope's sender (letter case aside), or the message is refused (550, this reason) before
-- anything signs it. Mail that no one logged in for (the internet's, the host's own) is not held
-- to it: a list or a forwarder rightly sends others' From:.
rspamd_config:register_symbol({
  name = 'MAILSITE_FROM_NOT_SENDER',
  type = 'prefilter',
  score = 0.0,
  group = 'policies',
  priority = lua_util.symbols_priorities.high,
  callback = function(task)
    if not task:get_user() then
      return
    end
    local envelope = task:get_from('smtp')
    local sender = (envelope and envelope[1] and envelope[1].addr or ''):lower()
    local from = task:get_from('mime') or {}
    local headers = task:get_header_full('From') or {}
    if sender ~= '' and #headers == 1 and #from == 1 and (from[1].addr or ''):lower() == sender then
      return
    end
    task:insert_result('MAILSITE_FROM_NOT_SENDER', 1.0)
    task:set_pre_result('reject', 'the From: header must be one address, the one you send as (MAIL FROM)', 'mailsite')
  end,
})
