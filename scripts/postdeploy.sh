#!/bin/sh
# azd postdeploy hook (also runnable by hand after `func azure functionapp publish`):
#  1. sets host key `vmagent` (what the pool agents present) from Key Vault secret agent-function-key;
#  2. publishes the agent of this commit (scripts/postprovision.sh), so app and agents match;
#  3. subscribes the blob trigger to BlobCreated events of the data container through the storage
#     account's Event Grid system topic. The webhook needs the blobs_extension system key, which
#     exists only once the code (with its Event Grid blob trigger) runs, so this cannot be Bicep.
# Needs: az (signed in), and the azd outputs below in the environment.
set -eu

: "${AZURE_RESOURCE_GROUP:?}" "${AZURE_FUNCTION_NAME:?}" "${AZURE_EVENTGRID_TOPIC_NAME:?}"
: "${AZURE_KEY_VAULT_NAME:?}"
container="${DATA_CONTAINER:-data}"
function_name="${BLOB_TRIGGER_FUNCTION:-data_blob_trigger}"
subscription_name="${EVENTGRID_SUBSCRIPTION_NAME:-data-blob-created}"
tries="${SYSTEM_KEY_TRIES:-30}"

agent_key="$(az keyvault secret show --vault-name "$AZURE_KEY_VAULT_NAME" \
  --name agent-function-key --query value -o tsv)"
az functionapp keys set -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_NAME" \
  --key-type functionKeys --key-name vmagent --key-value "$agent_key" --output none
echo "postdeploy: host key vmagent set"

# The agents follow the code: publish this commit's agent (they upgrade when idle).
./scripts/postprovision.sh

# The host creates the blobs_extension key when it first starts the Event Grid blob trigger.
blobs_key=""
i=0
while [ "$i" -lt "$tries" ]; do
  blobs_key="$(az functionapp keys list -g "$AZURE_RESOURCE_GROUP" -n "$AZURE_FUNCTION_NAME" \
    --query "systemKeys.blobs_extension" -o tsv 2>/dev/null || true)"
  [ -n "$blobs_key" ] && break
  i=$((i + 1))
  echo "postdeploy: waiting for the blobs_extension system key ($i/$tries)"
  sleep 10
done
if [ -z "$blobs_key" ]; then
  echo "postdeploy: no blobs_extension system key; is data_blob_trigger deployed with source EventGrid?" >&2
  exit 1
fi

endpoint="https://${AZURE_FUNCTION_NAME}.azurewebsites.net/runtime/webhooks/blobs?functionName=Host.Functions.${function_name}&code=${blobs_key}"
az eventgrid system-topic event-subscription create \
  -g "$AZURE_RESOURCE_GROUP" --system-topic-name "$AZURE_EVENTGRID_TOPIC_NAME" \
  -n "$subscription_name" \
  --endpoint-type webhook --endpoint "$endpoint" \
  --included-event-types Microsoft.Storage.BlobCreated \
  --subject-begins-with "/blobServices/default/containers/${container}/" \
  --max-delivery-attempts 30 --event-ttl 1440 --output none
echo "postdeploy: Event Grid subscription $subscription_name delivers ${container}/ BlobCreated to $function_name"
