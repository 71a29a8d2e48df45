"""DKIM as the image and the receivers meet it (issue 16.2, found in review)."""

from __future__ import annotations

import stat

from tests.test_dovecot import _finish_primary, _primary_tree


def test_rspamd_reaches_its_dkim_keys_in_the_baked_image(tmp_path):
    # The keys travel in the key archive alone and finish.sh unpacks it under umask 077: a
    # directory the archive creates on its own way down is root's 0700, and rspamd's workers
    # (_rspamd, after they dropped root) could not open a key they own: nothing would be signed.
    tree = _primary_tree()
    keys = [path for path in tree if path.startswith("etc/mail/dkim/")]
    assert keys
    root, result = _finish_primary(tmp_path, tree)
    assert result.returncode == 0, result.stdout + result.stderr
    for key in keys:
        parent = (root / key).parent
        while parent != root:
            mode = parent.stat().st_mode
            assert mode & stat.S_IXOTH, f"/{parent.relative_to(root)} is {stat.filemode(mode)}: _rspamd cannot reach /{key}"
            parent = parent.parent
        assert (root / key).stat().st_mode & 0o777 == 0o400
