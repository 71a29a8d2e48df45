# As root on Debian. make test: the whole suite. make example: render the example stack and configtest it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: deps bake-deps venv root test example lab bench clean

# What the checks and the lab need on this machine; their daemons come from the daemon root (make root).
DEBS := mmdebstrap packer iproute2 openssl python3-venv shellcheck git jq mksh original-awk openssh-client nsd

deps:
	@dpkg -s $(DEBS) >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; }

# What a real bake boots besides Packer (`pulumi up`, `mailsite bake`): qemu, KVM when /dev/kvm is
# writable. Not in DEBS: no test boots a VM, and CI need not install it.
BAKE_DEBS := qemu-system-x86 qemu-utils

bake-deps: deps
	@dpkg -s $(BAKE_DEBS) >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BAKE_DEBS) >/dev/null; }

# The package goes in editable, without dependencies (requirements.txt pins them all): the
# `mailsite` command, whose code is this tree's.
venv: $(VENV)/.installed
$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	$(VENV)/bin/pip install -q --no-deps -e .
	touch $@

# The Debian roots the checks and the lab run their daemons from (mailsite/daemonroot.py): trixie's
# smtpd and bgpd, bookworm-backports' Dovecot 2.3. Built once per machine (about a minute, 460 MB
# in /var/cache/mailsite), then checked and reused.
root: deps venv
	$(PY) -m mailsite.daemonroot

# ruff (mistakes: pyflakes, pycodestyle, bugbear) and mypy (types) first, as pyproject.toml sets
# them: seconds, before the suite's minutes. pytest on three workers (pytest-xdist): the lab's tests,
# kept together on one (tests/conftest.py), mostly wait on daemons, so two more keep two CPUs busy.
test: deps venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(PY) -m mailsite.daemonroot >/dev/null
	$(PY) -m pytest -q --durations=20 -n 3

example: deps venv
	$(PY) -m mailsite secrets init --config Pulumi.example.yaml
	$(PY) -m mailsite render --config Pulumi.example.yaml --out $(OUT)
	$(PY) -m mailsite configtest $(OUT)

# docs/settings.md and the comments of Pulumi.example.yaml, from the settings' descriptions in
# mailsite/model.py (a test fails when either drifts from them).
.PHONY: docs
docs: venv
	$(PY) -m mailsite.settings_doc --write

# The site on the real daemons in network namespaces: up, the demonstration, its summary, down.
lab: deps venv
	$(PY) -m mailsite lab demo --config Pulumi.example.yaml

# Every benchmark: the lab (start-up, latency, burst, 200k list update), program evaluation, images.
bench: deps venv
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(OUT) $(VENV)
