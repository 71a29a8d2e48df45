"""The site model: one typed description of a mail site, validated once.

Every fact that more than one file depends on (an MX preference, a host's MX name, a pf table
name, the spamd sync peers) is decided here and nowhere else; renderers, the firewall rule set,
DNS and the lab only read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from .targets import TARGETS


def _not_true_or_false(value: object) -> object:
    # pydantic would take YAML's true as 1: `updateMinutes: true` is a mistake, not a minute.
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "written as true or false")
    return value


# Every whole-number setting is one: digits, never true/false.
_WHOLE = BeforeValidator(_not_true_or_false)


def _written(kind: str) -> BeforeValidator:
    """Addresses and networks only as text: pydantic would take YAML's `true` as 0.0.0.1/32 and a
    bare number as an address, neither of which anyone means."""
    def check(value: object) -> object:
        if isinstance(value, (bool, int, float, bytes)):
            raise PydanticCustomError(kind, "written as text")
        if isinstance(value, str) and "%" in value:
            # Python reads anything after % as an IPv6 zone index, line breaks and all, and
            # writes it back out with the address (into hostname.if, pf.conf, resolv.conf).
            raise ValueError("a zone index (% and a link's name) belongs to one machine, not to an address others "
                             "reach; write the address alone")
        return value
    return BeforeValidator(check)


IPv4Address = Annotated[ipaddress.IPv4Address, _written("ip_v4_address")]
IPv6Address = Annotated[ipaddress.IPv6Address, _written("ip_v6_address")]
IPv4Network = Annotated[ipaddress.IPv4Network, _written("ip_v4_network")]
IPv6Network = Annotated[ipaddress.IPv6Network, _written("ip_v6_network")]
IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# spamd(8) hard-codes these two pf table names; a bgp table may not take either.
SPAMD_TABLES = ("spamd", "spamd-white")
# pf.conf's own tables: <nospamd> (senders that skip spamd, with /etc/mail/nospamd) and the rate
# limit's offenders. A bgp list filling either would pass listed senders straight to smtpd, or
# shut bypassed ones out of ssh.
BRUTEFORCE_TABLE = "bruteforce"
PF_CONF_TABLES = ("nospamd", BRUTEFORCE_TABLE)
# OpenBSD's drivers for the NICs a site's VMs get, with the qemu device the bake gives each.
# A host's egress is one of them and its unit: a pseudo-interface (lo0, pflog1, enc0, carp1)
# carries no mail from the internet.
NIC_DRIVERS = {"vio": "virtio-net", "vmx": "vmxnet3", "em": "e1000", "re": "rtl8139"}

# The primary's mailboxes. Mail is stored for one virtual mail user, so no system account per
# mailbox; the image creates it (OpenBSD's packages take uids 500-999, users from 1000), and the
# lab's nodes carry it too.
MAIL_USER = "_vmail"
MAIL_UID = 2000
# Where the persistent data volume is mounted on the primary: what a replaced VM must find again
# (the mailboxes with their Dovecot indexes) lives below it.
STATE_MOUNT = "/var/mailsite"
MAILBOXES = f"{STATE_MOUNT}/mail"
# Dovecot's LMTP socket as OpenBSD's package places it (its base_dir, /var/dovecot): smtpd
# delivers there.
LMTP_SOCKET = "/var/dovecot/lmtp"
# How the primary marks mail rspamd scores as spam without rejecting it (its "add header" action):
# filter-rspamd writes this header itself, whatever rspamd's own header settings say. Dovecot's
# Sieve files mail carrying it into the user's JUNK_MAILBOX; rspamd must remove a sender's own.
SPAM_HEADER = ("X-Spam", "yes")
JUNK_MAILBOX = "Junk"

# How large a site may grow. Every MX syncs spamd with every other and pf lists them all, so the
# render grows with the square of the hosts (2,000 took minutes and gigabytes): 50, the most
# bench/program.py measures, is ten times the MXes a domain's senders ever try. A small
# organisation has hundreds of users and a few dozen domains.
MAX_HOSTS = 50
MAX_DOMAINS = 1000
MAX_USERS = 10000
MAX_ALIASES = 10000
# Every MX's recipient tables hold each user and alias in each domain: 100,000 addresses is 2 MB
# and a tenth of a second per host (ten domains of ten thousand names).
MAX_ADDRESSES = 100_000

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# At most 20 digits: Python refuses to read a number of thousands (its "4300 digits" traceback),
# while one too large but of 20 digits still hears the setting's range (2G is 10 digits in bytes).
_SIZE = re.compile(r"^([1-9][0-9]{0,19})([KMG]?)$")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_DURATION = re.compile(r"^[1-9][0-9]{0,19}[smhd]$")
_DISK_SIZE = r"^[1-9][0-9]{0,19}[MG]$"
_COMMUNITY = re.compile(r"^([0-9]{1,5}):([0-9]{1,5})$")
_PF_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,31}$")
_INTERFACE = re.compile(rf"^({'|'.join(NIC_DRIVERS)})(0|[1-9][0-9]{{0,2}})$")
# RFC 6996 private ranges; a site's own AS toward the route servers must be one of them.
_PRIVATE_AS = ((64512, 65534), (4200000000, 4294967294))


@dataclass(frozen=True)
class HostAddresses:
    """A host's addresses once known: fixed in the stack file, or allocated by the provider."""

    ipv4: ipaddress.IPv4Address
    ipv6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True)
class DkimKey:
    """A domain's signing key, as the primary carries it (mailsite.dkim keeps the selectors)."""

    domain: str
    selector: str
    private_key: SecretStr  # PEM
    fingerprint: str  # of its public key: names the key without revealing it


@dataclass(frozen=True)
class BackupSecrets:
    """What the primary's backup job opens its restic repository with; each version names its
    secret without revealing it."""

    repository_password: SecretStr
    repository_password_version: str
    access_key_id: SecretStr
    secret_access_key: SecretStr
    credentials_version: str


@dataclass(frozen=True)
class HostSecrets:
    """The secrets a host's image carries; each version names its secret without revealing it."""

    queue_key: SecretStr
    queue_key_version: str
    spamd_sync_key: SecretStr
    spamd_sync_key_version: str
    # The mailbox users' bcrypt hashes ($2b$), by user name, for those who have set a password:
    # smtpd's credentials table and Dovecot's passwd-file are both made from them, on the primary.
    password_hashes: Mapping[str, SecretStr] = field(default_factory=dict)
    password_hashes_version: str = "none"
    # The DKIM signing keys: the primary's, one per domain (rspamd); a backup's, the one of the site
    # domain its MX name lies in (filter-dkimsign signs its own mail).
    dkim_keys: tuple[DkimKey, ...] = ()
    # The primary's, when backup is on (backup.bucket): restic's repository password, the storage's keys.
    backup: BackupSecrets | None = None

    @property
    def dkim_keys_version(self) -> str:
        """Which keys sign, by selector and fingerprint: a new signing key replaces the primary,
        a key merely published (or withdrawn) for a rotation does not."""
        return " ".join(f"{key.domain}={key.selector}/{key.fingerprint}" for key in self.dkim_keys) or "none"


class Settings(BaseModel):
    """Settings are camelCase in the stack file, as Pulumi config is; unknown keys are errors."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=to_camel, populate_by_name=True, frozen=True
    )


# Every value below reaches a file that runs as root (smtpd.conf, bgpd.conf, rc.conf.local, smtpd
# tables) or a command line, so each is matched whole (re.fullmatch: `$` lets a final newline
# through, and a newline in a value writes a line of its own into a config).


def _domain(value: str) -> str:
    name = value.rstrip(".").lower()
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        if not name.isascii():
            # An internationalized name goes into DNS, smtpd.conf and certificates as its A-labels.
            try:
                ascii_name = name.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError("not a domain name; write it like example.org") from None
            raise ValueError(f"write the domain in its ASCII form (A-labels), {ascii_name}")
        raise ValueError("not a domain name; write it like example.org")
    if labels[-1].isdigit():
        raise ValueError("not a domain name (an address?); write it like example.org")
    return name


# smtpd's sub-address delimiter: on every MX user+tag@domain reaches user@domain (the primary's
# virtual lookup and a backup's rcpt-to table both cut the tag at the first "+").
SUBADDRESS_DELIMITER = "+"


def _local_part(value: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", value):
        if SUBADDRESS_DELIMITER in value:
            # The primary reads "a+b" as user a, tag b, and refuses it, while a backup's table
            # holds "a+b" as written and accepts: the backup would take mail that then bounces.
            raise ValueError('"+" starts a sub-address (user+tag reaches user); drop it from the name')
        raise ValueError("not a mailbox name; use lower-case letters, digits and . _ -")
    return value


Domain = Annotated[str, AfterValidator(_domain)]
LocalPart = Annotated[str, AfterValidator(_local_part)]

# An address outside the site, as smtpd's virtual table holds it: a dot-atom local part of the
# characters addresses really use (RFC 5322 allows more, such as ` $ { } | #, which table and
# alias syntax or a later shell read as their own) and a domain.
_FOREIGN_LOCAL_PART = re.compile(r"[A-Za-z0-9_+=-]+(\.[A-Za-z0-9_+=-]+)*")


def _alias_target(value: str) -> str:
    local_part, at, domain = value.rpartition("@")
    if not at:
        return _local_part(value)
    if not _FOREIGN_LOCAL_PART.fullmatch(local_part) or len(local_part) > 64:
        raise ValueError("not a mail address; write a user of recipients.users or one address like bob@example.net")
    try:
        return f"{local_part}@{_domain(domain)}"
    except ValueError:
        raise ValueError("not a mail address (its domain); write one address like bob@example.net") from None


AliasTarget = Annotated[str, AfterValidator(_alias_target)]

# A path on the host, written into smtpd.conf and rc.conf.local: letters, digits and . _ + - in
# each component; nothing a shell or smtpd's lexer reads as quoting, expansion or a new word.
_PATH_COMPONENT = re.compile(r"[A-Za-z0-9._+-]+")


def _host_path(value: str) -> str:
    """An absolute path of safe characters naming a file, {fqdn} standing for the host's MX name."""
    components = value.split("/")
    named = [c.replace("{fqdn}", "x") for c in components[1:]]
    if components[0] != "" or not named or not all(_PATH_COMPONENT.fullmatch(c) and c not in (".", "..") for c in named):
        raise ValueError("must be an absolute path of letters, digits and . _ + - (/ between names, {fqdn} for "
                         "the host's MX name), like /etc/ssl/{fqdn}.crt")
    return value


CertificatePath = Annotated[str, AfterValidator(_host_path)]


def _key_path(value: str) -> str:
    # OpenBSD keeps keys in /etc/ssl/private (0700 root), as acme-client(1) does; install.site
    # makes a key's directory 0700 when it makes one. Anywhere else a key is readable, or a
    # system file (tls.key: /etc/pf.conf) that the first certificate would be written over.
    if "private" not in _host_path(value).split("/")[1:-1]:
        raise ValueError("not below a directory named private; keep the key in a root-only (0700) directory, "
                         "like /etc/ssl/private/{fqdn}.key")
    return value


KeyPath = Annotated[str, AfterValidator(_key_path)]

# bgpd keeps at most 31 characters of a neighbor's descr ("too long: max 31"); these characters
# bgpd's quoted strings hold as they are (no quote, backslash or line end).
_DESCRIPTION = re.compile(r"[A-Za-z0-9]([A-Za-z0-9 ._,:/()@+-]{0,29}[A-Za-z0-9._,:/()@+-])?")


def _description(value: str) -> str:
    if not _DESCRIPTION.fullmatch(value):
        raise ValueError("not a route server description; use at most 31 letters, digits, spaces and . _ , : / ( ) @ + -, like bgp-spamd rs1")
    return value


Description = Annotated[str, AfterValidator(_description)]

# Settings that reach no host's file but an API call, a command's argument or a local path: what
# a person could mean, and nothing that breaks a line or drives a terminal.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_URL = re.compile(r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._~%/+=&?:@-]*)?")
_LIBVIRT_URI = re.compile(r"[a-z][a-z0-9+]*://[A-Za-z0-9._@:-]*(/[A-Za-z0-9._~%/+=&?:@-]*)?")


def _matching(pattern: re.Pattern[str], fix: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(fix)
        return value
    return AfterValidator(check)


def _local_path(value: str) -> str:
    if not value or not value.isprintable():
        raise ValueError("not a path; write a directory on this machine, with no control or line-break characters")
    return value


Name = Annotated[str, _matching(_NAME, "not a name; use letters, digits and . _ - (at most 128), starting with a letter or digit")]
Url = Annotated[str, _matching(_URL, "not a URL; write one like https://ams1.vultrobjects.com, with no spaces or quotes")]
LibvirtUri = Annotated[str, _matching(_LIBVIRT_URI, "not a libvirt URI; write one like qemu:///system or qemu+ssh://root@kvm.example.org/system")]
LocalPath = Annotated[str, AfterValidator(_local_path)]

# The key types OpenSSH takes for root, and what the base64 blob of each holds after its type
# name (RFC 4253 6.6, RFC 5656 3.1, PROTOCOL.u2f): a truncated paste fails to decode to these.
_SSH_KEY_FIELDS = {
    "ssh-ed25519": 1,  # the 32-byte key
    "ssh-rsa": 2,  # e, n
    "ecdsa-sha2-nistp256": 2,  # curve name, point
    "ecdsa-sha2-nistp384": 2,
    "ecdsa-sha2-nistp521": 2,
    "sk-ssh-ed25519@openssh.com": 2,  # key, application
    "sk-ecdsa-sha2-nistp256@openssh.com": 3,  # curve name, point, application
}
_SSH_KEY_FIX = "not an ssh public key; paste one whole line of a .pub file (ssh-ed25519 AAAA... comment)"


def _ssh_fields(blob: bytes) -> list[bytes]:
    fields = []
    while blob:
        if len(blob) < 4 or len(blob) < 4 + (size := struct.unpack(">I", blob[:4])[0]):
            raise ValueError("cut short")
        fields.append(blob[4 : 4 + size])
        blob = blob[4 + size :]
    return fields


def _ssh_public_key(value: str) -> str:
    kind, _, rest = value.partition(" ")
    encoded, _, comment = rest.partition(" ")
    if kind not in _SSH_KEY_FIELDS or not comment.isprintable():
        raise ValueError(_SSH_KEY_FIX)
    try:
        fields = _ssh_fields(base64.b64decode(encoded, validate=True))
    except (binascii.Error, ValueError):
        raise ValueError(f"{_SSH_KEY_FIX}; this one's key is cut short or not base64") from None
    if not fields or fields[0] != kind.encode() or len(fields) != 1 + _SSH_KEY_FIELDS[kind]:
        raise ValueError(f"{_SSH_KEY_FIX}; this one's key does not hold a {kind} key (cut short, or another key's type)")
    if kind.endswith("ed25519") or kind.endswith("ed25519@openssh.com"):
        if len(fields[1]) != 32:
            raise ValueError(f"{_SSH_KEY_FIX}; this one's ed25519 key is not 32 bytes")
    elif kind.startswith(("ecdsa", "sk-ecdsa")) and fields[1].decode(errors="replace") != kind.split("-")[2].split("@")[0]:
        raise ValueError(f"{_SSH_KEY_FIX}; this one's curve is not {kind}'s")
    return value


SshPublicKey = Annotated[str, AfterValidator(_ssh_public_key)]



class Host(Settings):
    """One MX: an entry of mailsite:hosts."""

    name: Annotated[str, Field(pattern=_LABEL.pattern)] = Field(description=(
        "The host's short name, lower-case letters, digits and -, like mx1: it names the VM, its "
        "image and its queue key, and makes the default MX name <name>.<first domain>."))
    role: Literal["primary", "backup"] = Field(description=(
        "primary takes the site's mail into mailboxes; a backup accepts only the site's "
        "recipients, keeps their mail in its encrypted queue and relays it to the primary. "
        "Exactly one host is the primary."))
    preference: Annotated[int, Field(ge=0, le=65535), _WHOLE] | None = Field(None, description=(
        "The host's MX preference in every domain's MX records, lower tried first; by default 10, "
        "20, 30... by the host's place in the list. A backup's must be higher than the primary's."))
    fqdn: Domain | None = Field(None, description=(
        "The host's MX name: the MX records point at it, its A/AAAA and PTR records carry it, and "
        "a backup names itself by it in relay backup mx. By default <name>.<first domain>; it "
        "must lie in one of the site's domains."))
    ipv4: IPv4Address | Literal["allocate"] | None = Field(None, description=(
        "The host's IPv4 address, or allocate for an address the provider reserves (on Vultr). "
        "Required on every host, though null is shown as its default: spamd greylists and syncs "
        "over IPv4 only."))
    ipv6: IPv6Address | Literal["allocate"] | None = Field(None, description=(
        "The host's IPv6 address, allocate for the provider's, or left out (null) for no IPv6."))
    egress_interface: Annotated[str, Field(pattern=_INTERFACE.pattern)] = Field("vmx0", description=(
        "OpenBSD's name for the network card that faces the internet, its driver and unit: vmx0 "
        "(vmxnet3) on libvirt, vio0 (virtio) on Vultr. pf and the interface's addressing are "
        "written for it."))

    @property
    def mx_name(self) -> str:
        """The name MX records point at, the PTR answers and a backup names in `relay backup mx`."""
        assert self.fqdn is not None, "Site fills in fqdn"
        return self.fqdn

    @property
    def mx_preference(self) -> int:
        """The preference in the MX records, once Site has filled in the default."""
        assert self.preference is not None, "Site fills in preference"
        return self.preference

    @property
    def is_primary(self) -> bool:
        return self.role == "primary"


def _size_of(value: str, fix: str) -> int:
    """A size as smtpd and Dovecot write it (a whole number of bytes, or one with K, M or G)."""
    match = _SIZE.fullmatch(value)
    if not match:
        raise ValueError(f"not a size; write a whole number with K, M or G, like {fix}")
    return int(match[1]) * _SIZE_UNITS[match[2]]


# Far above any mailbox of a small organisation; the bound keeps a
# 20-digit G from overflowing the 64-bit byte counts Dovecot keeps its quota in.
MAX_QUOTA = 10000 << 30


def _quota(value: str) -> str:
    if _size_of(value, "5G") > MAX_QUOTA:
        raise ValueError(f"too large for a mailbox; choose at most {MAX_QUOTA >> 30}G, like 5G")
    return value


Quota = Annotated[str, AfterValidator(_quota)]


class Account(Settings):
    """A mailbox user: an entry of mailsite:recipients.users, written as the name alone (alice) or
    as a section with the name and the user's own settings."""

    name: LocalPart = Field(description=(
        "The local part that has a mailbox on the primary, in every site domain (alice receives "
        "alice@ each domain): lower-case letters, digits and . _ -."))
    quota: Quota | None = Field(None, description=(
        "The most mail the user's mailbox holds, a whole number of bytes or one with K, M or G, "
        "like 5G, at least maxMessageSize; null for no limit. Mail past it is refused for a while "
        "(a temporary failure, so the sender retries) and nothing is lost."))


def _account(value: object) -> object:
    # A user written as a plain name (users: [alice, bob]) is an account with no settings of its
    # own; the name is checked here, so that a bad one is reported at users[i] as it always was.
    if isinstance(value, str):
        return {"name": _local_part(value)}
    if isinstance(value, (dict, Account)):
        return value
    raise PydanticCustomError("string_type", "a user is a name, or a section with name and quota")


def _catch_all_domains(value: object) -> object:
    # Domains are compared lower-case and without a final dot: two spellings of one domain would
    # otherwise leave one catch-all silently in place of the other.
    if isinstance(value, dict):
        seen: dict[str, str] = {}
        for key in value:
            try:
                name = _domain(key) if isinstance(key, str) else None
            except ValueError:
                continue  # reported on its own, by the key's check
            if name is not None and name in seen:
                raise ValueError(f"{name} is listed twice ({seen[name]} and {key}); keep one catch-all per domain")
            if name is not None:
                seen[name] = key
    return value


class Recipients(Settings):
    """Who receives mail: mailbox users on the primary, and aliases onto them.

    Backups accept only these, in every site domain, so they refuse unknown recipients at RCPT
    time instead of accepting and bouncing later (backscatter).
    """

    # Bounds far above a small organisation's, below what would make a render take minutes
    # (every MX's tables list every recipient in every domain).
    accounts: list[Annotated[Account, BeforeValidator(_account)]] = Field(
        alias="users", min_length=1, max_length=MAX_USERS, description=(
            "The users with a mailbox on the primary, in every site domain (alice receives alice@ "
            "each domain), at least one: each a name (lower-case letters, digits and . _ -), or a "
            "section with name and the user's own settings, like name: bob, quota: 5G."))
    aliases: dict[LocalPart, AliasTarget] = Field({}, max_length=MAX_ALIASES, description=(
        "Local parts that forward to a user of users or to one address outside the site, like "
        "abuse: alice. The site must receive postmaster (RFC 5321), usually as an alias."))
    catch_all: Annotated[dict[Domain, LocalPart], BeforeValidator(_catch_all_domains)] = Field(
        {}, max_length=MAX_DOMAINS, description=(
            "A user of users who receives, per site domain, the mail to every local part of that "
            "domain that no user or alias takes, like example.org: alice. A catch-all domain "
            "takes mail to any name (guessed ones too, which spammers try); a domain left out "
            "refuses unknown recipients."))

    @property
    def users(self) -> list[str]:
        """The mailbox users' names, in the stack file's order."""
        return [account.name for account in self.accounts]

    def account(self, name: str) -> Account:
        return next(account for account in self.accounts if account.name == name)

    def local_parts(self) -> list[str]:
        return sorted(set(self.users) | set(self.aliases))

    def exists(self, local_part: str) -> bool:
        """Whether mail to this local part is taken, as smtpd sees it: case aside, and with any
        +tag cut off (alice+lists reaches alice)."""
        return local_part.lower().split(SUBADDRESS_DELIMITER, 1)[0] in self.local_parts()


class Greylist(Settings):
    """spamd's greylisting (spamd -G passtime:greyexp:whiteexp): how long an unknown sender waits,
    and how long spamd remembers senders."""

    pass_minutes: Annotated[int, Field(ge=1, le=1440), _WHOLE] = Field(2, description=(
        "Minutes an unknown sender must wait before its retry is let through to smtpd (spamd -G "
        "passtime)."))
    grey_expiry_hours: Annotated[int, Field(ge=1, le=8760), _WHOLE] = Field(4, description=(
        "Hours spamd remembers a greylisted sender that has not retried yet (greyexp); one that "
        "retries later starts over."))
    white_expiry_hours: Annotated[int, Field(ge=1, le=8760), _WHOLE] = Field(864, description=(
        "Hours a sender that passed greylisting stays whitelisted without mailing again "
        "(whiteexp); 864, 36 days, is spamd's own default and outlasts a monthly newsletter."))

    @property
    def spamd_g(self) -> str:
        return f"{self.pass_minutes}:{self.grey_expiry_hours}:{self.white_expiry_hours}"


class RouteServer(Settings):
    """A bgp-spamd route server: an entry of mailsite:bgpSpamd.routeServers."""

    address: IPv4Address = Field(description=(
        "The route server's IPv4 address; bgpd on every MX keeps a multihop eBGP session with it."))
    description: Description = Field("bgp-spamd route server", description=(
        "The session's name in bgpd.conf, which bgpctl shows: at most 31 letters, digits, spaces "
        "and . _ , : / ( ) @ + -."))


class PfTables(Settings):
    """The pf tables bgpd fills from the route servers' lists (bgpd.conf: set pftable)."""

    blacklist: Annotated[str, Field(pattern=_PF_TABLE.pattern)] = Field("bgp_spamd", description=(
        "The pf table bgpd fills with the blacklisted senders; pf hands them to spamd even if "
        "they once passed greylisting. Not spamd's own tables (spamd, spamd-white) nor pf.conf's "
        "(nospamd, bruteforce)."))
    bypass: Annotated[str, Field(pattern=_PF_TABLE.pattern)] = Field("bgp_spamd_bypass", description=(
        "The pf table bgpd fills with senders that skip spamd and reach smtpd directly; its own "
        "table, other than blacklist."))


def _community(value: str) -> str:
    match = _COMMUNITY.fullmatch(value)
    if not match or max(int(part) for part in match.groups()) > 65535:
        raise ValueError("not a BGP community; write it as AS:N, both at most 65535, like 65066:666")
    return value


Community = Annotated[str, AfterValidator(_community)]


class BgpSpamd(Settings):
    """The bgp-spamd feed: eBGP multihop sessions that carry black and bypass lists as /32s."""

    local_as: Annotated[int, Field(ge=1, le=4294967295), _WHOLE] = Field(description=(
        "Your own AS number toward the route servers, a private one (64512-65534 or "
        "4200000000-4294967294): the sessions are eBGP, other than routeServerAs, and announce "
        "nothing."))
    route_server_as: Annotated[int, Field(ge=1, le=4294967295), _WHOLE] = Field(65066, description=(
        "The route servers' AS number; 65066 is the bgp-spamd project's."))
    route_servers: list[RouteServer] = Field(min_length=1, description=(
        "The route servers every MX takes the lists from (the bgp-spamd project's are listed at "
        "bgp-spamd.net); at least one. Each sends the same lists, so one may fail."))
    multihop: Annotated[int, Field(ge=2, le=255), _WHOLE] = Field(64, description=(
        "How many router hops away the route servers may be (bgpd multihop): they are across the "
        "internet, not on the MXes' network."))
    blacklist_community: Community = Field("65066:666", description=(
        "The BGP community (AS:N) that marks a route as a blacklisted sender; 65066:666 on "
        "bgp-spamd."))
    bypass_community: Community = Field("65066:42", description=(
        "The BGP community (AS:N) that marks a sender that skips greylisting; 65066:42 on "
        "bgp-spamd. It must differ from blacklistCommunity."))
    pf_tables: PfTables = PfTables()
    table_entries: Annotated[int, Field(le=10000000), _WHOLE] = Field(400000, description=(
        "pf's limit on table entries: room for every listed prefix and spamd's own tables. A "
        "route server that sends more than half of it is cut off (bgpd max-prefix) and tried "
        "again after 30 minutes; the lists hold about 200,000 prefixes, so at least 400000."))
    update_minutes: Annotated[int, Field(ge=1, le=59), _WHOLE] = Field(20, description=(
        "Minutes between runs of the list update job, which loads the routes bgpd holds into "
        "spamd's lists (spamd-setup)."))

    # A route server cut off for sending too many prefixes is tried again after this long.
    max_prefix_restart_minutes: ClassVar[int] = 30

    @property
    def max_prefixes(self) -> int:
        """The most prefixes one route server may send before bgpd ends its session (bgpd.conf
        max-prefix): every route server sends the same lists, and pf needs the other half of its
        table room for spamd's own tables. More than that is a wrong or hostile feed."""
        return self.table_entries // 2

    # What the bgp-spamd lists hold today, in prefixes; each route server sends all of them.
    listed_prefixes: ClassVar[int] = 200000

    @field_validator("table_entries")
    @classmethod
    def _room_for_the_lists(cls, value: int) -> int:
        if value // 2 < cls.listed_prefixes:
            # Below this, max-prefix (half of it) cuts every route server's session: no lists at all.
            raise ValueError(f"too small for the bgp-spamd lists (about {cls.listed_prefixes:,} prefixes from each "
                             f"route server, cut off past half of tableEntries); use {2 * cls.listed_prefixes} or more")
        return value

    @field_validator("local_as")
    @classmethod
    def _private_as(cls, value: int) -> int:
        if not any(low <= value <= high for low, high in _PRIVATE_AS):
            raise ValueError(
                "a public AS number; use a private one (64512-65534 or 4200000000-4294967294)"
            )
        return value


class Tls(Settings):
    """Where each host's certificate and key live on the host; {fqdn} is the host's MX name."""

    certificate: CertificatePath = Field("/etc/ssl/{fqdn}.crt", description=(
        "Path of each host's certificate on the host, which smtpd offers with STARTTLS; {fqdn} "
        "becomes the host's MX name."))
    key: KeyPath = Field("/etc/ssl/private/{fqdn}.key", description=(
        "Path of each host's private key, {fqdn} as for the certificate: below a directory named "
        "private (root-only, 0700) such as /etc/ssl/private, and not the certificate's own file."))

    def certificate_for(self, host: Host) -> str:
        return self.certificate_named(host.mx_name)

    def key_for(self, host: Host) -> str:
        return self.key_named(host.mx_name)

    # The same paths for a certificate named otherwise (the primary's MTA-STS certificates).
    def certificate_named(self, name: str) -> str:
        return self.certificate.replace("{fqdn}", name)

    def key_named(self, name: str) -> str:
        return self.key.replace("{fqdn}", name)


def _report_address(value: str) -> str:
    local_part, at, domain = value.rpartition("@")
    if not at or not _FOREIGN_LOCAL_PART.fullmatch(local_part) or len(local_part) > 64:
        raise ValueError("not a mail address; write one address like postmaster@example.org")
    try:
        return f"{local_part}@{_domain(domain)}"
    except ValueError:
        raise ValueError("not a mail address (its domain); write one address like postmaster@example.org") from None


ReportAddress = Annotated[str, AfterValidator(_report_address)]

# RFC 8461 3.2: max_age is at most 31557600 seconds (a year); a day at least, so that a policy
# outlives a short outage of the policy host.
MTA_STS_MAX_AGE = (86400, 31557600)


class Dns(Settings):
    """The records that tell other mail servers how to trust the site's mail (SPF, DMARC, MTA-STS,
    TLS-RPT, CAA, the mail clients' SRV records), in every DNS the site writes: Vultr DNS, the
    zone files, the lab. docs/operating.md, DNS records, says what each does."""

    dmarc_policy: Literal["none", "quarantine", "reject"] = Field("quarantine", description=(
        "What the DMARC record asks receivers to do with mail in the site's domains that fails "
        "both SPF and DKIM alignment: none (only report), quarantine (the junk folder) or reject. "
        "The site signs and sends all its mail from the primary, so quarantine is safe from the "
        "start; reject once the reports show nothing legitimate failing."))
    dmarc_reports: ReportAddress | None = Field(None, description=(
        "The address receivers send DMARC aggregate reports to (rua); null for postmaster@ the "
        "first of domains. One outside the site's domains must publish that it takes the reports "
        "(docs/operating.md, DNS records)."))
    tls_reports: ReportAddress | None = Field(None, description=(
        "The address senders send TLS reports (TLS-RPT, RFC 8460: failed STARTTLS or MTA-STS) to; "
        "null for postmaster@ the first of domains."))
    mta_sts_mode: Literal["enforce", "testing"] = Field("enforce", description=(
        "The MTA-STS policy's mode: enforce (senders that support it deliver only over TLS to a "
        "listed MX with a valid certificate) or testing (they deliver anyway and report). A "
        "sender fetches the policy over HTTPS from mta-sts.<domain>, so before its certificate is "
        "issued no sender applies it."))
    mta_sts_max_age: Annotated[int, Field(ge=MTA_STS_MAX_AGE[0], le=MTA_STS_MAX_AGE[1]), _WHOLE] = Field(
        604800, description=(
            "Seconds a sender keeps the MTA-STS policy before fetching it again, between 86400 (a "
            "day) and 31557600 (a year); 604800 is a week."))
    nameservers: list[Domain] = Field([], max_length=13, description=(
        "The name servers of the site's domains, for the libvirt target's zone files: empty writes "
        "each domain's records as a file to $INCLUDE into your own zone; names here write complete "
        "zones (SOA and these NS records) instead. A name server inside a site domain must be one "
        "of the MXes, whose address the zone holds."))
    ttl: Annotated[int, Field(ge=60, le=86400), _WHOLE] = Field(3600, description=(
        "Seconds resolvers may keep the site's records (their TTL); a rotation of DKIM keys waits "
        "this long before signing with a new key."))


LETS_ENCRYPT = "https://acme-v02.api.letsencrypt.org/directory"
LETS_ENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
# The name each known CA looks for in a domain's CAA records (its own documentation): the CA of
# the directory's host, whose CAA records must allow it to issue.
_CAA_ISSUERS = {"acme-v02.api.letsencrypt.org": "letsencrypt.org", "acme-staging-v02.api.letsencrypt.org": "letsencrypt.org"}


def _directory(value: str) -> str:
    if not _URL.fullmatch(value) or not value.startswith("https://"):
        raise ValueError(f"not an ACME directory URL; write one over https, like {LETS_ENCRYPT}")
    return value


class Acme(Settings):
    """The certificate authority every MX gets its certificate from with acme-client(1), over
    http-01 (docs/operating.md, Certificates)."""

    directory: Annotated[str, AfterValidator(_directory)] = Field(LETS_ENCRYPT, description=(
        "The CA's ACME directory URL: Let's Encrypt's production one by default; Let's Encrypt's "
        f"staging one ({LETS_ENCRYPT_STAGING}) issues certificates nobody trusts, with higher rate "
        "limits, for trying a new site out."))
    contact: ReportAddress | None = Field(None, description=(
        "A mail address the CA may write to about the site's ACME account (incidents, changes "
        "of its terms); null for none. Let's Encrypt sends no expiry notices since 2025: `doctor` "
        "warns of a certificate close to expiry. Best outside the site's own domains."))
    caa_issuer: Domain | None = Field(None, description=(
        "The CA's name in the domains' CAA records, which allow only it to issue certificates for "
        "them: null for the one the directory's CA documents (letsencrypt.org for Let's Encrypt); "
        "another CA's directory needs it here."))

    @property
    def issuer_known(self) -> bool:
        """Whether the CAA issuer is known: given, or the directory's a known CA's (the rules
        refuse a site without it, so `issuer` is always known past them)."""
        return self.caa_issuer is not None or _directory_host(self.directory) in _CAA_ISSUERS

    @property
    def issuer(self) -> str:
        """The CAA issuer domain (RFC 8659 issue tag) of the site's CA."""
        return self.caa_issuer or _CAA_ISSUERS[_directory_host(self.directory)]

    @property
    def trusted(self) -> bool:
        """Whether its certificates verify against the CA bundle every MX has (/etc/ssl/cert.pem):
        not Let's Encrypt's staging ones, whose roots no system trusts. Another CA's directory is
        taken for a public CA's."""
        return self.directory != LETS_ENCRYPT_STAGING

    @property
    def authority(self) -> str:
        """The name acme-client.conf gives the CA (its authority block), as OpenBSD's own example
        names Let's Encrypt's two."""
        return {LETS_ENCRYPT: "letsencrypt", LETS_ENCRYPT_STAGING: "letsencrypt-staging"}.get(self.directory, "site-ca")


def _directory_host(url: str) -> str:
    return url.split("/", 3)[2].split(":")[0].lower()


def duration_seconds(value: str) -> int:
    """A duration as smtpd.conf writes one (`7d`, `30m`), in seconds, as smtpd reads it."""
    return int(value[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[value[-1]]


class Queue(Settings):
    """smtpd's queue on every MX."""

    ttl: Annotated[str, Field(pattern=_DURATION.pattern)] = Field("7d", description=(
        "How long smtpd keeps trying a message before it bounces it, a number with s, m, h or d "
        "of at most 30d: a backup holds mail this long while the primary is away (smtpd's own "
        "default is 4d)."))
    drain_minutes: Annotated[int, Field(ge=1, le=1440), _WHOLE] = Field(30, description=(
        "Minutes a host that is to be replaced or re-keyed gets to deliver its queue before it "
        "goes (pulumi up, rotate-queue-key, rotate-spamd-key)."))

    # smtpd reads a ttl into an int of seconds and refuses more ("invalid ttl delay"); a month is
    # already longer than any sender waits to hear that its mail was not delivered.
    ttl_at_most_days: ClassVar[int] = 30

    @field_validator("ttl")
    @classmethod
    def _a_month_at_most(cls, value: str) -> str:
        if duration_seconds(value) > cls.ttl_at_most_days * 86400:
            raise ValueError(f"too long for a queue; use {cls.ttl_at_most_days}d or less, like 7d "
                             f"(senders hear of undelivered mail only once it expires)")
        return value

    @property
    def ttl_seconds(self) -> int:
        return duration_seconds(self.ttl)


class Doctor(Settings):
    """What `doctor` looks up and where it draws its lines between PASS, WARN and FAIL."""

    blocklists: list[Domain] = Field(
        ["zen.spamhaus.org", "bl.spamcop.net", "b.barracudacentral.org", "psbl.surriel.com"], max_length=20,
        description=(
            "The DNS blocklists every MX address is looked up in, by zone; empty for none. A list "
            "that refuses to answer the resolver doctor asks (Spamhaus refuses public and cloud "
            "resolvers with an error code) is reported as cannot tell, never as listed."))
    certificate_warn_days: Annotated[int, Field(ge=1, le=89), _WHOLE] = Field(14, description=(
        "A certificate (an MX's STARTTLS, IMAPS, the files on a host) that expires within this "
        "many days is a WARN, an expired one a FAIL: acme-client renews a third of the lifetime "
        "ahead (30 days of Let's Encrypt's 90), so one this close has missed its renewals."))
    queue_age_warn_minutes: Annotated[int, Field(ge=1, le=43200), _WHOLE] = Field(60, description=(
        "An MX whose oldest queued message is older than this is a WARN (mail not moving), and a "
        "FAIL once it is older than half of queue.ttl (smtpd bounces it at ttl)."))
    free_space_warn_percent: Annotated[int, Field(ge=1, le=50), _WHOLE] = Field(10, description=(
        "Free space below this percentage on the file system holding an MX's queue or the "
        "primary's mail is a WARN, below half of it a FAIL: a full /var stops smtpd queueing "
        "mail, a full mail volume stops delivery into the mailboxes."))


class Network(Settings):
    """How each host's egress interface gets its address."""

    addressing: Literal["static", "autoconf"] = Field("autoconf", description=(
        "static writes the hosts' addresses into each host's interface file (libvirt); autoconf "
        "takes them by DHCP and router advertisements (Vultr)."))
    ipv4_prefix_length: Annotated[int, Field(ge=8, le=32), _WHOLE] = Field(24, description=(
        "The length of the IPv4 network every host sits in (the primary's), when addressing is "
        "static."))
    ipv4_gateway: IPv4Address | None = Field(None, description=(
        "The IPv4 default route, an address in the site network, when addressing is static; on "
        "libvirt the network's own address."))
    ipv6_prefix_length: Annotated[int, Field(ge=16, le=128), _WHOLE] = Field(64, description=(
        "The length of the IPv6 network every host sits in (the primary's), when addressing is "
        "static."))
    ipv6_gateway: IPv6Address | None = Field(None, description=(
        "The IPv6 default route when addressing is static; null for none."))
    nameservers: list[IPAddress] = Field([], description=(
        "Resolvers for the hosts when addressing is static, at least one on libvirt: smtpd needs "
        "one for every MX lookup and static hosts learn none by DHCP. libvirt's network answers "
        "DNS on its own address."))


class Dkim(Settings):
    """DKIM signing on the primary: one key per domain, kept in the secrets backend (made by
    secrets init), rotated with overlapping selectors by rotate-dkim-key."""

    selector_prefix: Annotated[str, _matching(re.compile(r"[a-z][a-z0-9]{0,39}"), "not a selector prefix; use a lower-case "
                                              "letter, then at most 39 lower-case letters or digits, like mailsite")] = Field("mailsite", description=(
        "The start of every selector name; a key's selector is this and the day it was made "
        "(mailsite20261126._domainkey.example.org), so a new key never reuses a published name."))
    key_bits: Literal[2048, 3072, 4096] = Field(2048, description=(
        "The size of each new RSA key. 2048 is what every receiver verifies and fits one DNS "
        "record; a change applies to keys made after it (secrets init, rotate-dkim-key)."))
    retire_after_days: Annotated[int, Field(ge=1, le=90), _WHOLE] = Field(7, description=(
        "Days a rotated-out key stays published after the primary signs with its successor, so "
        "mail in flight and a receiver's later re-check still verify; then rotate-dkim-key "
        "withdraws it."))


class Secrets(Settings):
    """Where queue keys (one per host) and the spamd sync key (one per site) come from.

    `inline` holds the values in the stack file itself and exists for tests only.
    """

    backend: Literal["file", "aws-secretsmanager", "inline"] = Field("file", description=(
        "file keeps the keys in a directory on this machine (the default, for trying the site "
        "out); aws-secretsmanager in AWS Secrets Manager; inline in the stack file, for the "
        "program's tests only (the command-line tool refuses it)."))
    path: LocalPath = Field(".mailsite/secrets", description=(
        "The file backend's directory on this machine, a relative one from the stack file's "
        "directory; secrets init creates it with mode 0700."))
    region: Name | None = Field(None, description=(
        "The AWS region of the aws-secretsmanager backend, like eu-central-1."))
    profile: Name | None = Field(None, description=(
        "The AWS credentials profile of the aws-secretsmanager backend; null for AWS's usual "
        "search (AWS_* variables and the like)."))
    endpoint_url: Url | None = Field(None, description=(
        "Another Secrets Manager endpoint, such as a local one for tests; null for AWS's own."))
    queue_keys: dict[Annotated[str, Field(pattern=_LABEL.pattern)], SecretStr] = Field({}, description=(
        "inline backend only (tests): each host's queue key by host name, 32 lower-case hex "
        "characters."))
    spamd_sync_key: SecretStr | None = Field(None, description=(
        "inline backend only (tests): the spamd sync key, 32 lower-case hex characters."))


class VultrBgp(Settings):
    """Vultr's BGP session, for sites that announce a prefix of their own from their MXes."""

    enabled: bool = Field(False, description=(
        "Open Vultr's BGP session from every MX to announce the prefixes below; the vultr target "
        "only."))
    local_as: Annotated[int, Field(ge=1, le=4294967295), _WHOLE] | None = Field(None, description=(
        "The AS number Vultr set up for your account's BGP session; needed when enabled."))
    prefixes: list[IPNetwork] = Field([], description=(
        "Your own prefixes to announce, as assigned to you (at most a /24 of IPv4 or a /48 of "
        "IPv6); needed when enabled."))

    # Vultr's side of the session, the same for every customer.
    neighbor: ClassVar[str] = "169.254.169.254"
    remote_as: ClassVar[int] = 64515
    multihop: ClassVar[int] = 2


class Vultr(Settings):
    """The Vultr target: VMs from baked snapshots, reserved IPs, firewall groups, Vultr DNS. With
    target vultr, set network.addressing autoconf, each host's egressInterface vio0 and its
    addresses allocate."""

    region: Name = Field("ams", description=(
        "The Vultr region every VM runs in, like ams."))
    plan: Name = Field("vc2-1c-2gb", description=(
        "The Vultr plan (size) of every VM, like vc2-1c-2gb."))
    ssh_key_ids: list[Name] = Field([], description=(
        "IDs of ssh keys kept at Vultr to give each instance; root's keys come from adminSshKeys, "
        "baked into the image."))
    dns: bool = Field(True, description=(
        "Serve the site's zones (MX, A, AAAA records) from Vultr DNS; false if you serve them "
        "elsewhere."))
    block_type: Literal["high_perf", "storage_opt"] = Field("high_perf", description=(
        "The Vultr block storage type of the primary's mail volume (mailVolume): high_perf (NVMe) "
        "or storage_opt (HDD), as the region offers. Fixed once the volume exists: another type "
        "would be a new, empty volume, which the volume's protection refuses."))
    bgp: VultrBgp = VultrBgp()


class Libvirt(Settings):
    """The libvirt target: VMs from baked qcow2 volumes on a routed network with fixed addresses."""

    uri: LibvirtUri = Field("qemu:///system", description=(
        "The libvirt connection, like qemu:///system or qemu+ssh://root@kvm.example.org/system."))
    network_name: Name = Field("mailsite", description=(
        "The libvirt network the stack makes for the hosts."))
    bridge: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{0,14}$")] = Field("virbr-mail", description=(
        "The Linux bridge of that network on the KVM host, at most 15 characters."))
    pool: Name = Field("default", description=(
        "The libvirt storage pool that holds the hosts' volumes."))
    memory_mib: Annotated[int, Field(ge=256, le=65536), _WHOLE] = Field(1024, description=(
        "Memory of each VM, in MiB."))
    vcpus: Annotated[int, Field(ge=1, le=64), _WHOLE] = Field(1, description=(
        "Virtual CPUs of each VM."))
    zone_dir: LocalPath = Field("zones", description=(
        "Directory on this machine where the stack writes nsd zone files (forward and reverse, "
        "one per zone) for your own name server."))


# The mail volume's bounds: room for a few mailboxes, and at most what MAX_QUOTA allows one user.
MAIL_VOLUME_SIZES = (1, 10000)  # in G


def _mail_volume_size(value: str) -> str:
    low, high = MAIL_VOLUME_SIZES
    match = re.fullmatch(r"([1-9][0-9]{0,19})G", value)
    if not match:
        raise ValueError("not a size in G; write a whole number of gigabytes, like 20G")
    if not low <= int(match[1]) <= high:
        raise ValueError(f"out of range; choose between {low}G and {high}G, like 20G")
    return value


def _duid(value: str) -> str:
    # disklabel(8) takes a UID as 16 hex digits; all zeros is how a disk without one shows.
    if not re.fullmatch(r"[0-9a-f]{16}", value) or not value.strip("0"):
        raise ValueError("not a disklabel UID; write 16 hex digits (0-9, a-f), not all zero, like 3f2a9c0d7e1b4a55")
    return value


class MailVolume(Settings):
    """The primary's persistent mail volume (mounted at /var/mailsite): the mailboxes with their
    Dovecot indexes, and spamd's greylist database. Made once, never replaced with the VM, kept
    by `pulumi destroy`."""

    size: Annotated[str, AfterValidator(_mail_volume_size)] = Field("20G", description=(
        "The volume's size in whole G, between 1G and 10000G, like 20G: room for every mailbox "
        "(each quota fits in it; quotas may add up to more, as few mailboxes fill up at once). "
        "Growing it later: raise it here on Vultr, or virsh vol-resize on libvirt, then growfs on "
        "the primary (docs/operating.md, The mail volume); it never shrinks."))
    duid: Annotated[str, AfterValidator(_duid)] | None = Field(None, description=(
        "The disklabel UID (16 hex digits) the primary labels a blank volume with and finds it "
        "by at boot; null for one derived from the first of domains. Set it to the old value "
        "before renaming the first domain, or the primary will not mount the volume."))

    @property
    def size_gb(self) -> int:
        return int(self.size.removesuffix("G"))


# A key prefix inside the backup bucket: names of letters, digits and . _ - with / between them.
_BUCKET_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}(/[A-Za-z0-9][A-Za-z0-9._-]{0,62}){0,7}")


def _bucket_prefix(value: str) -> str:
    if not _BUCKET_PREFIX.fullmatch(value):
        raise ValueError("not a prefix; write names of letters, digits and . _ - with / between them, like mailsite/example")
    return value


class Backup(Settings):
    """Encrypted, deduplicated backups of the primary's mail volume (the mailboxes, spamd's
    database, the ACME keys and certificates) with restic, to a bucket of S3-compatible storage.
    Off until bucket is set; the repository password and the storage's keys live in the secrets
    backend (secrets init, secrets backup-credentials), never here."""

    endpoint_url: Url | None = Field(None, description=(
        "The S3-compatible endpoint the primary sends its backups to, like "
        "https://ams1.vultrobjects.com; null for AWS S3."))
    bucket: Name | Literal[""] = Field("", description=(
        "A private bucket of yours for the backups, made beforehand (docs/backups.md); empty for "
        "no backups."))
    prefix: Annotated[str, AfterValidator(_bucket_prefix)] = Field("mailsite", description=(
        "Where in the bucket the restic repository lives, like mailsite or mailsite/example: "
        "sites sharing a bucket each take their own."))
    region: Name | None = Field(None, description=(
        "The storage's region, where the endpoint needs one (AWS S3: the bucket's); null for none."))
    every_hours: Annotated[int, Field(ge=1, le=168), _WHOLE] = Field(24, description=(
        "Hours between two backups: 1, 2, 3, 4, 6, 8, 12 or 24, or whole days up to 168. Root's "
        "cron on the primary runs the job at a random minute (once a day at a random hour for "
        "24). doctor warns once the last backup is older than twice this."))
    keep_daily: Annotated[int, Field(ge=0, le=3650), _WHOLE] = Field(7, description=(
        "How many days' last backups are kept (restic forget --keep-daily)."))
    keep_weekly: Annotated[int, Field(ge=0, le=520), _WHOLE] = Field(5, description=(
        "How many weeks' last backups are kept besides (--keep-weekly)."))
    keep_monthly: Annotated[int, Field(ge=0, le=1200), _WHOLE] = Field(12, description=(
        "How many months' last backups are kept besides (--keep-monthly); at least one of the "
        "three is above 0, or every backup would be forgotten."))

    @field_validator("bucket")
    @classmethod
    def _bucket_name(cls, value: str) -> str:
        # S3's own rule for bucket names; restic would otherwise retry a refused one for minutes.
        if value and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", value):
            raise ValueError("not a bucket name; S3 takes 3 to 63 lower-case letters, digits, . and -, like example-mail-backups")
        return value

    @field_validator("every_hours")
    @classmethod
    def _schedulable(cls, value: int) -> int:
        # cron repeats evenly only by a divisor of a day's hours, or by whole days.
        if 24 % value and value % 24:
            raise ValueError("cron runs a job evenly only every 1, 2, 3, 4, 6, 8, 12 or 24 hours, or whole days (48 to 168); "
                             "choose one of those")
        return value

    @field_validator("keep_monthly")
    @classmethod
    def _keeps_something(cls, value: int, info: ValidationInfo) -> int:
        if not (value or info.data.get("keep_daily") or info.data.get("keep_weekly")):
            raise ValueError("keepDaily and keepWeekly are 0 too, so every backup would be deleted after it is made; "
                             "keep at least one, like keepMonthly: 12")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.bucket)

    @property
    def repository(self) -> str:
        """The restic repository, as restic names an S3 one: s3:<endpoint>/<bucket>/<prefix>."""
        endpoint = (self.endpoint_url or "https://s3.amazonaws.com").rstrip("/")
        return f"s3:{endpoint}/{self.bucket}/{self.prefix}"


class ObjectStorage(Settings):
    """S3-compatible storage (Vultr Object Storage or S3) that hands raw images to Vultr."""

    endpoint_url: Url | None = Field(None, description=(
        "The S3-compatible endpoint, like https://ams1.vultrobjects.com; null for AWS S3."))
    bucket: Name | Literal[""] = Field("", description=(
        "A private bucket of yours where raw images wait for Vultr to make snapshots of them."))
    region: Name | None = Field(None, description=(
        "The storage's region, where the endpoint needs one; null for none."))
    profile: Name | None = Field(None, description=(
        "The credentials profile for the storage; null for the usual search (AWS_* variables and "
        "the like)."))
    presign_seconds: Annotated[int, Field(ge=60, le=43200), _WHOLE] = Field(3600, description=(
        "Seconds the image's URL handed to Vultr stays valid; Vultr fetches the image once, right "
        "after the URL is made."))


# A package as pkg_add(1) and pkg_info(1) name one: its stem, then a version that starts with a digit
# (2.3.21.1), its revision (p1) and epoch (v0), as OpenBSD's package index lists it.
_DOVECOT_PACKAGE = re.compile(r"dovecot-([0-9]+)\.([0-9]+)(\.[0-9]+)*(p[0-9]+)?(v[0-9]+)?")
# configs/dovecot is written in this major's grammar: 2.4 reads another (dovecot_config_version,
# renamed settings), so a 2.4 package would refuse the image's dovecot.conf.
DOVECOT_MAJOR = (2, 3)


def _dovecot_package(value: str) -> str:
    match = _DOVECOT_PACKAGE.fullmatch(value)
    if not match:
        raise ValueError("not a dovecot package's name; write it as pkg_info -Q dovecot lists it, like dovecot-2.3.21.1p1v0")
    if (int(match[1]), int(match[2])) != DOVECOT_MAJOR:
        major = ".".join(map(str, DOVECOT_MAJOR))
        raise ValueError(f"Dovecot {match[1]}.{match[2]}, while the site's dovecot.conf is written for Dovecot {major} "
                         f"(OpenBSD 7.8's); use a {major} package, like dovecot-2.3.21.1p1v0")
    return value


def _package_of(stem: str, major: tuple[int, ...] | None, example: str, why: str = ""):
    """A validator of an images.packages pin for the package `stem`: its name as pkg_info -Q
    lists it (stem, version, revision, epoch, a flavour), of the `major` the site's files are
    written for (None: any)."""
    pattern = re.compile(rf"{re.escape(stem)}-([0-9]+(?:\.[0-9]+)*)(p[0-9]+)?(v[0-9]+)?(-[a-z_][a-z0-9_]*)?")

    def check(value: str) -> str:
        match = pattern.fullmatch(value)
        if not match:
            raise ValueError(f"not a {stem} package's name; write it as pkg_info -Q {stem} lists it, like {example}")
        found = tuple(int(number) for number in match[1].split("."))
        if major is not None and found[:len(major)] != major:
            wanted = ".".join(map(str, major))
            raise ValueError(f"{stem} {match[1]}, while {why} {wanted} (OpenBSD 7.8's); use a {stem} {wanted} package, "
                             f"like {example}")
        return value
    return AfterValidator(check)


class Packages(Settings):
    """The OpenBSD packages the images install with pkg_add(1): where from, and exactly which
    version of each, so that two bakes of one stack install the same programs."""

    mirror: Url = Field("https://cdn.openbsd.org/pub/OpenBSD", description=(
        "The OpenBSD mirror packages come from, as /etc/installurl names one (pkg_add adds "
        "/<release>/packages/<arch>/); every image gets it as its /etc/installurl."))
    dovecot: Annotated[str, AfterValidator(_dovecot_package)] = Field("dovecot-2.3.21.1p1v0", description=(
        "The Dovecot package the primary's image installs, exactly as the mirror's index names "
        "it (pkg_info -Q dovecot): OpenBSD 7.8's is dovecot-2.3.21.1p1v0. A Dovecot 2.3 one, as "
        "the site's dovecot.conf is written in 2.3's grammar; the bake fails when the mirror "
        "lacks it."))
    # The primary's spam filtering (OpenBSD 7.8's packages; docs/operating.md, Spam filtering).
    rspamd: Annotated[str, _package_of("rspamd", (3,), "rspamd-3.13.1", "the site's local.d files are written for rspamd")] = Field(
        "rspamd-3.13.1", description=(
            "The rspamd package the primary's image installs, as pkg_info -Q rspamd names it: "
            "OpenBSD 7.8's is rspamd-3.13.1. An rspamd 3, whose grammar the site's local.d files use."))
    redis: Annotated[str, _package_of("redis", None, "redis-6.2.20")] = Field("redis-6.2.20", description=(
        "The redis package holding rspamd's state on the primary, as pkg_info -Q redis names it: "
        "OpenBSD 7.8's is redis-6.2.20."))
    opensmtpd_filter_rspamd: Annotated[str, _package_of("opensmtpd-filter-rspamd", None, "opensmtpd-filter-rspamd-0.1.8")] = Field(
        "opensmtpd-filter-rspamd-0.1.8", description=(
            "The package of the filter through which the primary's smtpd asks rspamd, as pkg_info -Q "
            "opensmtpd-filter-rspamd names it on your mirror (check the revision there: a pN suffix)."))
    opensmtpd_filter_dkimsign: Annotated[str, _package_of("opensmtpd-filter-dkimsign", None, "opensmtpd-filter-dkimsign-0.6")] = Field(
        "opensmtpd-filter-dkimsign-0.6", description=(
            "The package of the filter that DKIM-signs a backup's own mail (cron's, its bounces), as "
            "pkg_info -Q opensmtpd-filter-dkimsign names it on your mirror: check it there (OpenBSD "
            "7.8's exact version is not confirmed here; Debian 13, which the checks run, has 0.5)."))
    dovecot_pigeonhole: Annotated[str, _package_of("dovecot-pigeonhole", (0, 5), "dovecot-pigeonhole-0.5.21.1v1",
                                                   "Dovecot 2.3 loads Pigeonhole")] = Field(
        "dovecot-pigeonhole-0.5.21.1v1", description=(
            "The Sieve plugin the primary's Dovecot files marked mail into Junk with, as pkg_info -Q "
            "dovecot-pigeonhole names it: OpenBSD 7.8's is dovecot-pigeonhole-0.5.21.1v1 (0.5, for Dovecot 2.3)."))

    restic: Annotated[str, _package_of("restic", None, "restic-0.18.1")] = Field("restic-0.18.1", description=(
        "The restic package the primary's image installs when backup is on, as pkg_info -Q "
        "restic names it on your mirror (check it there: OpenBSD 7.8's exact version is not "
        "confirmed here). restic 0.17 or later: older ones keep no size with a snapshot, so "
        "backup status shows none."))

    def pinned(self, package: str) -> str:
        """The exact package name for a daemon's package (its Daemon.package). A package without
        a setting here is a bug: the image would install whatever version the mirror has."""
        field = package.replace("-", "_")  # opensmtpd-filter-rspamd: images.packages.opensmtpdFilterRspamd
        if field not in type(self).model_fields or field == "mirror":
            raise KeyError(f"no images.packages setting pins the package {package}: add one to Packages in mailsite/model.py")
        return str(getattr(self, field))


# /var beside the queue: logs between newsyslog turns, spamd's database, /var/db and backups.
VAR_BESIDE_QUEUE = 1 << 30
# The boot area before the OpenBSD partition and disklabel's alignment of each partition.
DISK_RESERVED = 64 << 20


def size_bytes(value: str) -> int:
    """A size as smtpd and disklabel write it (50M, 8G), in bytes."""
    match = _SIZE.fullmatch(value)
    assert match, value
    return int(match[1]) * _SIZE_UNITS[match[2]]


def size_text(size: int) -> str:
    """Bytes as disklabel(8) and smtpd read them: whole G where exact, else whole M (rounded up)."""
    if size % (1 << 30) == 0:
        return f"{size >> 30}G"
    return f"{-(-size // (1 << 20))}M"


@dataclass(frozen=True)
class DiskPartition:
    """One line of a disklabel(8) autopartitioning template."""

    mount_point: str  # or swap
    min_bytes: int
    max_bytes: int | None  # None: as large as the disk allows
    share: int  # percent of the space left once every minimum is met


class Images(Settings):
    """How each host's OpenBSD image is baked."""

    openbsd_version: Annotated[str, Field(pattern=r"^[0-9]\.[0-9]$")] = Field("7.8", description=(
        "The OpenBSD release to install, like 7.8."))
    iso_url: Url = Field("https://cdn.openbsd.org/pub/OpenBSD/7.8/amd64/install78.iso", description=(
        "Where the release's install ISO is downloaded from."))
    iso_sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = Field(None, description=(
        "The install ISO's SHA-256 checksum, from the SHA256 file beside it; needed to bake, so a "
        "changed ISO is refused."))
    cache_dir: LocalPath = Field("~/.cache/mailsite/images", description=(
        "Directory on this machine for downloaded ISOs and baked images by identity, mode 0700: "
        "images hold keys."))
    disk_size: Annotated[str, Field(pattern=_DISK_SIZE)] = Field("8G", description=(
        "Each VM's disk, a number with M or G: /, swap, /tmp, /usr, /usr/local and /var with the "
        "mail queue. Too small a disk is refused with the size it needs."))
    queue_messages: Annotated[int, Field(ge=1, le=100000), _WHOLE] = Field(40, description=(
        "How many messages of maxMessageSize the queue on /var has room for: a backup holds mail "
        "while the primary is away and answers 4xx once /var is full."))
    queue_space: str | None = Field(None, description=(
        "The queue's room on /var outright, like 3G; null for maxMessageSize times queueMessages."))
    timeout_minutes: Annotated[int, Field(ge=5, le=600), _WHOLE] = Field(90, description=(
        "Minutes a bake may take before it is stopped; a bake without KVM takes far longer."))
    object_storage: ObjectStorage = ObjectStorage()
    packages: Packages = Packages()

    @field_validator("queue_space")
    @classmethod
    def _queue_space(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(_DISK_SIZE, value):
            raise ValueError("not a size; write a whole number with M or G, like 3G, or null for the default")
        return value

    @property
    def set_suffix(self) -> str:
        """The installer names sets by version without the dot: site78.tgz for 7.8."""
        return self.openbsd_version.replace(".", "")

    def disk_layout(self) -> list[DiskPartition]:
        """The partitions the installer makes (disklabel(8) automatic allocation, in this order:
        the installer takes the first for / and the second for swap). /var comes last, so it
        takes whatever the others leave."""
        assert self.queue_space is not None, "the site fills queue_space in"
        return [
            DiskPartition("/", 1 << 30, 2 << 30, 5),
            DiskPartition("swap", 256 << 20, 1 << 30, 5),
            DiskPartition("/tmp", 256 << 20, 1 << 30, 5),
            # base, comp and man with the kernel's relink objects; no X sets.
            DiskPartition("/usr", 2 << 30, 4 << 30, 10),
            DiskPartition("/usr/local", 512 << 20, 4 << 30, 10),
            DiskPartition("/var", VAR_BESIDE_QUEUE + size_bytes(self.queue_space), None, 65),
        ]

    def disk_shortfall(self) -> int:
        """Bytes the disk lacks for the layout's minimum sizes (0: it fits)."""
        needed = DISK_RESERVED + sum(partition.min_bytes for partition in self.disk_layout())
        return max(0, needed - size_bytes(self.disk_size))


class Spam(Settings):
    """rspamd's verdicts on the primary's incoming and submitted mail, by score (rspamd's
    actions): what is refused outright, and what is delivered marked, into the user's Junk."""

    reject_score: Annotated[float, Field(gt=0, le=1000), _WHOLE] = Field(15, description=(
        "The score from which smtpd refuses a message at the end of DATA, with rspamd's reason "
        "(550): the sender's MTA tells the sender, nothing is stored. rspamd's own default, 15."))
    junk_score: Annotated[float, Field(gt=0, le=1000), _WHOLE] = Field(6, description=(
        "The score from which a message is delivered marked (X-Spam: yes) and Dovecot files it in "
        "the user's Junk folder; below rejectScore. rspamd's own default, 6."))

    @model_validator(mode="before")
    @classmethod
    def _default_junk_score_checked(cls, data: Any) -> Any:
        # A rejectScore at or below the default junkScore is refused too, named as the stack names it.
        if isinstance(data, dict) and not {"junkScore", "junk_score"} & data.keys():
            data = {**data, "junkScore": cls.model_fields["junk_score"].default}
        return data

    @field_validator("junk_score")
    @classmethod
    def _below_reject(cls, value: float, info: ValidationInfo) -> float:
        reject = info.data.get("reject_score")
        if reject is not None and value >= reject:
            raise ValueError(f"not below rejectScore ({reject:g}): a message that scores this much is refused, "
                             f"never filed in Junk; set junkScore below {reject:g} (rspamd's defaults: 6, "
                             f"rejectScore 15)")
        return value


class Site(Settings):
    """A whole mail site: the `mailsite:` namespace of a Pulumi stack file."""

    target: Literal["libvirt", "vultr"] = Field("libvirt", description=(
        "Where the site runs: libvirt (your own KVM host) or vultr."))
    vultr: Vultr = Vultr()
    libvirt: Libvirt = Libvirt()

    domains: list[Domain] = Field(min_length=1, max_length=MAX_DOMAINS, description=(
        "The mail domains the site receives for; the first also names the hosts "
        "(mx1.example.org)."))
    hosts: list[Host] = Field(min_length=1, max_length=MAX_HOSTS, description=(
        "The MXes, best first: exactly one primary and any number of backups. Two hosts or five: "
        "add or remove entries."))
    admin_cidrs: list[IPNetwork] = Field([], description=(
        "Networks ssh is allowed from, in pf and the cloud firewall; empty for no ssh at all."))
    admin_ssh_keys: list[SshPublicKey] = Field([], description=(
        "Public keys that may log in as root over ssh (from adminCidrs only), one line of a .pub "
        "file each. Baked into each image: a VM made from a snapshot gets no keys from the "
        "provider."))
    recipients: Recipients
    dkim: Dkim = Dkim()
    greylist: Greylist = Greylist()
    spam: Spam = Spam()
    bgp_spamd: BgpSpamd
    max_message_size: str = Field("50M", description=(
        "The largest message every MX accepts (smtpd max-message-size), a whole number of bytes or "
        "one with K, M or G, between 64K and 2G."))
    queue: Queue = Queue()
    tls: Tls = Tls()
    acme: Acme = Acme()
    dns: Dns = Dns()
    network: Network = Network()
    secrets: Secrets = Secrets()
    images: Images = Images()
    mail_volume: MailVolume = MailVolume()
    backup: Backup = Backup()
    doctor: Doctor = Doctor()

    @field_validator("max_message_size")
    @classmethod
    def _size(cls, value: str) -> str:
        size = _size_of(value, "50M")
        if not 64 << 10 <= size <= 2 << 30:
            raise ValueError("out of range; choose between 64K and 2G, like 50M")
        return value

    @model_validator(mode="after")
    def _fill_in_hosts(self) -> Site:
        # Defaults that depend on host order and the site's domain, decided once here.
        filled = [
            host.model_copy(
                update={
                    "preference": 10 * (index + 1) if host.preference is None else host.preference,
                    "fqdn": host.fqdn or f"{host.name}.{self.domains[0]}",
                }
            )
            for index, host in enumerate(self.hosts)
        ]
        object.__setattr__(self, "hosts", filled)
        return self

    # Whether images.queueSpace was written in the stack file rather than filled in below.
    _queue_space_given: bool = PrivateAttr(True)

    @model_validator(mode="after")
    def _fill_in_queue_space(self) -> Site:
        # Room on /var for queueMessages messages at maxMessageSize, unless queueSpace says it.
        if self.images.queue_space is None:
            space = size_text(size_bytes(self.max_message_size) * self.images.queue_messages)
            object.__setattr__(self, "images", self.images.model_copy(update={"queue_space": space}))
            self._queue_space_given = False
        return self

    @property
    def queue_room(self) -> str:
        """The queue's room on /var and where it comes from, in the stack file's words."""
        images = self.images
        if self._queue_space_given:
            return f"queueSpace {images.queue_space}"
        return f"{images.queue_space} for queueMessages {images.queue_messages} at maxMessageSize {self.max_message_size}"

    # Facts derived from the model: every consumer asks here.

    @property
    def primary(self) -> Host:
        return next(host for host in self.hosts if host.is_primary)

    @property
    def mail_volume_duid(self) -> str:
        """The disklabel UID of the primary's mail volume: mailVolume.duid, or one derived from
        the first domain, so that every image of the site looks for the same disk."""
        if self.mail_volume.duid is not None:
            return self.mail_volume.duid
        derived = hashlib.sha256(f"mailsite mail volume {self.domains[0]}".encode()).hexdigest()[:16]
        return derived if derived.strip("0") else "1" * 16  # an all-zero UID means "no label"

    @property
    def backups(self) -> list[Host]:
        return [host for host in self.hosts if not host.is_primary]

    @property
    def replacement_order(self) -> list[Host]:
        """Backups first, worst preference first, the primary last: the order hosts are taken down
        in (a rotation, a destroy), so that while one is out mail has a better MX to go to. The
        VMs are created the other way round, the primary first."""
        return sorted(self.backups, key=lambda host: -host.mx_preference) + [self.primary]

    def host(self, name: str) -> Host:
        return next(host for host in self.hosts if host.name == name)

    def spamd_sync_peers(self, host: Host) -> list[Host]:
        """Every other MX: spamd sync targets, pf's spamd-sync sources, the firewall's udp/8025."""
        return [other for other in self.hosts if other.name != host.name]

    def relay_backup_mx(self, host: Host) -> str:
        """The name a backup gives `relay backup mx`: its own MX name, so that smtpd relays only
        to MXes whose preference is strictly better than its own, never to itself."""
        assert not host.is_primary
        return host.mx_name

    def mx_records(self) -> list[tuple[str, int, str]]:
        """(domain, preference, target) for every site domain and MX, best preference first."""
        ordered = sorted(self.hosts, key=lambda host: (host.mx_preference, host.name))
        return [(domain, host.mx_preference, host.mx_name) for domain in self.domains for host in ordered]

    def runs_on(self, target: str) -> bool:
        """Whether the site runs on `target`: the one place a site's target is compared to a name.
        A name missing from mailsite.targets is a bug (a rule about it would never apply)."""
        if target not in TARGETS:
            raise KeyError(f"no target {target!r} in mailsite.targets.TARGETS")
        return self.target == target

    @property
    def provider_bgp(self) -> VultrBgp | None:
        """The target's own BGP session, announcing the site's prefixes from its MXes (bgpd.conf's
        provider neighbor, pf's and the cloud firewall's tcp/179 from it), or None: no session."""
        if self.runs_on("vultr") and self.vultr.bgp.enabled:
            return self.vultr.bgp
        return None

    @property
    def image_format(self) -> str:
        """Vultr makes snapshots from raw disk images; libvirt volumes are qcow2."""
        return TARGETS[self.target].image_format

    def ipv4_network(self) -> ipaddress.IPv4Network:
        """The one network every host sits in, when addressing is static."""
        return ipaddress.IPv4Network(f"{self.primary.ipv4}/{self.network.ipv4_prefix_length}", strict=False)

    def ipv6_network(self) -> ipaddress.IPv6Network | None:
        if not isinstance(self.primary.ipv6, ipaddress.IPv6Address):
            return None
        return ipaddress.IPv6Network(f"{self.primary.ipv6}/{self.network.ipv6_prefix_length}", strict=False)

    def valid_recipients(self) -> list[str]:
        """The recipients every MX takes, as smtpd's tables write them: each user and alias in each
        site domain, and @domain (any local part) for a domain with a catch-all. The primary's
        virtuals map each one somewhere, and each backup takes exactly these."""
        return [address for domain in self.domains for address in
                [f"{part}@{domain}" for part in self.recipients.local_parts()]
                + ([f"@{domain}"] if domain in self.recipients.catch_all else [])]

    def accepts(self, address: str) -> bool:
        """Whether every MX takes mail for this address at RCPT: a site domain and a recipient,
        plus-forms and case included, or any local part of a catch-all domain. The primary and
        the backups must agree with it."""
        local_part, _, domain = address.rpartition("@")
        domain = domain.lower()
        return domain in self.domains and (self.recipients.exists(local_part) or domain in self.recipients.catch_all)
