#!/usr/bin/env bash
# Offline checks of the Helm chart (no cluster, no helm binary): lint --strict, render with
# every values file in helm/ci/, validate the objects against Kubernetes schemas, check the
# failure messages and the three node scripts, yamllint. See helm/check.py.
# Prints "helm: N passed, M failed" and exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"

# Pinned: versions verified to work together offline (helm-python-sdk bundles Helm's Go SDK
# as a shared library; kubernetes-validate bundles the schemas up to Kubernetes 1.37).
PIP_PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 yamllint==1.38.0)

have_tools() {
  python3 - <<'PY' 2>/dev/null
import importlib.metadata as m
want = {"helm-python-sdk": "0.2.2", "kubernetes-validate": "1.37.0", "yamllint": "1.38.0"}
raise SystemExit(0 if all(m.version(k) == v for k, v in want.items()) else 1)
PY
}

if ! have_tools; then
  echo "helm-check: pip install ${PIP_PACKAGES[*]}"
  python3 -m pip install --quiet "${PIP_PACKAGES[@]}" 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages "${PIP_PACKAGES[@]}"
  have_tools || {
    echo "helm-check: ${PIP_PACKAGES[*]} are still not importable by python3 after installing them" >&2
    exit 1
  }
fi

exec python3 check.py
