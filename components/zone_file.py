"""ZoneFile: a zone file on the machine running pulumi, for the user's own name server (libvirt).

A dynamic resource rather than a write inside the program, so that preview shows it, `up` writes
it, `destroy` removes it, and a change of records is an update like any other. A complete zone's
SOA serial is written in here, when the text has changed (mailsite.dns.SERIAL): the date of the
write as YYYYMMDDnn, and always more than the last, so a secondary sees every change and none is
made by a preview that changes nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ResourceProvider, UpdateResult

from mailsite.dns import with_serial


class _ZoneFileProvider(ResourceProvider):
    def create(self, props):
        serial = _serial()
        _write(props["path"], with_serial(props["text"], serial))
        return CreateResult(id_=props["path"], outs={**props, "serial": serial})

    def diff(self, _id, olds, news):
        return DiffResult(
            changes=olds.get("text") != news["text"] or olds.get("path") != news["path"],
            replaces=["path"] if olds.get("path") != news["path"] else [],
            delete_before_replace=False,
        )

    def update(self, _id, olds, news):
        serial = _serial(int(olds.get("serial") or 0))
        _write(news["path"], with_serial(news["text"], serial))
        return UpdateResult(outs={**news, "serial": serial})

    def delete(self, _id, props):
        Path(props["path"]).unlink(missing_ok=True)


def _serial(last: int = 0) -> int:
    # YYYYMMDDnn (RFC 1912 2.2), the form most zones already carry: a zone the user served before
    # under it is replaced by one with a greater serial, which the seconds since 1970 (1.8e9)
    # would not be, and the secondaries would keep the old zone. More than 99 changes a day run
    # into the next day's numbers, still growing.
    return max(int(time.strftime("%Y%m%d", time.gmtime())) * 100, last + 1)


def _write(path: str, text: str) -> None:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".new")
    staging.write_text(text)
    os.replace(staging, target)


class ZoneFile(pulumi.dynamic.Resource):
    path: pulumi.Output[str]
    text: pulumi.Output[str]

    def __init__(self, name: str, path: pulumi.Input[str], text: pulumi.Input[str], opts: pulumi.ResourceOptions | None = None):
        super().__init__(_ZoneFileProvider(), name, {"path": path, "text": text}, opts)
