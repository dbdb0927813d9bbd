#!/bin/sh
# azd postprovision hook: publish the agent (agent/ + shared/ + requirements) as a tarball in the
# agent-package container, where the pool VMs' cloud-init fetches it with their managed identity
# (VMPOOL_AGENT_PACKAGE_URL in each VM's userData). VMs that boot before the upload keep retrying the download.
set -eu

: "${AZURE_STORAGE_ACCOUNT_NAME:?}"
container="${AGENT_PACKAGE_CONTAINER:-agent-package}"
blob="${AGENT_PACKAGE_BLOB:-vmpool-agent.tar.gz}"
package="$(mktemp -d)/$blob"

# agent/ (with its requirements.txt) and shared/ at the top, as shared/pool/vm/cloud-init.yaml expects.
tar --exclude='__pycache__' --exclude='*.pyc' -czf "$package" agent shared
az storage blob upload --auth-mode login --account-name "$AZURE_STORAGE_ACCOUNT_NAME" \
  --container-name "$container" --name "$blob" --file "$package" --overwrite --output none
echo "postprovision: uploaded $blob to $container"
