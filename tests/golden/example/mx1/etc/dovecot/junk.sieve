# The site's Sieve script (RFC 5228), run by Dovecot's LMTP on every delivery before any of the
# user's own: mail rspamd marked as spam goes to the user's Junk folder, the rest to the
# INBOX. Rendered by mailsite: change the stack, not this file.
require ["fileinto"];

# Written by smtpd's rspamd filter when rspamd scores a message above spam.junkScore (and below
# the score it rejects at); rspamd removes the header from what arrives with one already. Header
# names and (i;ascii-casemap) values compare without case.
if header :is "X-Spam" "yes" {
  fileinto "Junk";
}
