#!/bin/sh
# azd postprovision hook: publish the agent with scripts/publish_agent.py: a versioned package
# (agent/ + shared/) and release.json in the agent-package container. New VMs' cloud-init
# installs vmpool-agent.tar.gz (VMPOOL_AGENT_PACKAGE_URL in their userData; VMs that boot before
# the upload keep retrying); running agents move to the release at boot and when idle.
# The version is agent/__init__.py's plus the commit, so each deployment is one agents follow.
# Signs in with azure-identity (the azd/az login); retries while a new role assignment
# propagates.
set -eu

: "${AZURE_STORAGE_ACCOUNT_NAME:?}"
container="${AGENT_PACKAGE_CONTAINER:-agent-package}"
suffix="${AZURE_STORAGE_SUFFIX:-core.windows.net}"
python="$(command -v python3 || command -v python)"
commit="$(git rev-parse --short HEAD 2>/dev/null || date -u +%Y%m%d%H%M%S)"
base="$("$python" -c 'import re; print(re.search(r"__version__ = \"([^\"]*)\"", open("agent/__init__.py").read()).group(1))')"

"$python" scripts/publish_agent.py --account-url "https://$AZURE_STORAGE_ACCOUNT_NAME.blob.$suffix" \
  --container "$container" --version "$base+$commit"
