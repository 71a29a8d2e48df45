-- rspamd's own rules on mx1.example.org (local.d/rspamd.lua, read after the package's rules).
-- Rendered by mailsite: change the stack, not this file.

local lua_util = require "lua_util"

-- Each word of a header's text that reads as an address (something@something), in lower case.
local function address_words(text)
  local words = {}
  for word in (text or ''):gmatch('[^%s<>"(),;:%[%]\\]+@[^%s<>"(),;:%[%]\\]+') do
    words[#words + 1] = word:lower()
  end
  return words
end

-- A user who logged in sends as the envelope's sender alone. smtpd's senders table holds that
-- sender to the user's own addresses but never reads the From: header, the address a reader sees
-- and DMARC aligns with, which dkim_signing then signs: alice could write From: bob of the same
-- domain and have it signed. So the From: header must be one header of one address, the
-- envelope's sender (letter case aside), or the message is refused (550, this reason) before
-- anything signs it. Nor may another address stand anywhere a reader takes for the sender: in
-- From:'s display name or comment, plain or MIME-encoded (From: bob@example.org <alice@...>,
-- which many readers show as bob, and some parsers take for bob's address), nor in a Sender:
-- (shown as "on behalf of"); a name (Alice Doe, or the sender's own address) is taken. Mail that
-- no one logged in for (the internet's, the host's own) is not held to it: a list or a forwarder
-- rightly sends others' From:.
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
    local own = sender ~= '' and #headers == 1 and #from == 1 and (from[1].addr or ''):lower() == sender
    for _, name in ipairs({ 'From', 'Sender' }) do
      for _, header in ipairs(task:get_header_full(name) or {}) do
        for _, text in ipairs({ header.value, header.decoded }) do
          for _, word in ipairs(address_words(text)) do
            own = own and word == sender
          end
        end
      end
    end
    if own then
      return
    end
    task:insert_result('MAILSITE_FROM_NOT_SENDER', 1.0)
    task:set_pre_result('reject', 'the From: header must be one address, the one you send as (MAIL FROM)', 'mailsite')
  end,
})
