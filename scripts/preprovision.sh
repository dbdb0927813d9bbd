#!/bin/sh
# azd preprovision hook: make sure the pool VMs have an SSH public key to install.
# Uses VM_ADMIN_SSH_PUBLIC_KEY from the azd environment when set; otherwise creates a key pair
# in .azure/<env>/ (kept out of git: .azure/.gitignore ignores everything) and stores its public half.
set -eu

if [ -n "${VM_ADMIN_SSH_PUBLIC_KEY:-}" ]; then
  echo "preprovision: using VM_ADMIN_SSH_PUBLIC_KEY from the environment"
  exit 0
fi

key_dir=".azure/${AZURE_ENV_NAME:?AZURE_ENV_NAME is not set (run through azd)}"
key_file="$key_dir/vmpool_admin_ed25519"
mkdir -p "$key_dir"
[ -f .azure/.gitignore ] || printf '*\n' > .azure/.gitignore
if [ ! -f "$key_file" ]; then
  ssh-keygen -q -t ed25519 -N "" -C "vmpool-admin@${AZURE_ENV_NAME}" -f "$key_file"
fi
azd env set VM_ADMIN_SSH_PUBLIC_KEY "$(cat "$key_file.pub")"
echo "preprovision: created $key_file for the pool VMs' admin user"
