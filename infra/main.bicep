// The VM pool orchestrator on Azure: function app (Flex Consumption, or Elastic Premium with a
// staging slot), storage with identity-only access, monitoring, Key Vault, and the VM pool.
// Deployed by `azd up` (see azure.yaml); parameters come from main.parameters.json.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('Name of the azd environment; it seeds the unique names of all resources.')
param environmentName string

@minLength(1)
@description('Region of every resource. Flex Consumption must be available there.')
@metadata({ azd: { type: 'location' } })
param location string

@description('Object id of the deploying user; gets data access to storage and Key Vault for checks. Empty to skip.')
param principalId string = ''

@allowed(['User', 'ServicePrincipal'])
@description('Kind of principal principalId is.')
param principalType string = 'User'

@allowed(['FlexConsumption', 'ElasticPremium'])
@description('FlexConsumption (default, no slots) or ElasticPremium (adds the staging slot the status-check release needs).')
param hostingPlan string = 'FlexConsumption'

@allowed(['EP1', 'EP2', 'EP3'])
@description('Elastic Premium size, used when hostingPlan is ElasticPremium.')
param elasticPremiumSku string = 'EP1'

@allowed(['3.10', '3.11', '3.12'])
@description('Python version of the function app.')
param pythonVersion string = '3.11'

@description('Durable task hub of the production slot (slot-sticky).')
param taskHubName string = 'vmpool'

@description('Durable task hub of the staging slot (slot-sticky); never shared with production.')
param stagingTaskHubName string = 'vmpoolstaging'

@description('Functions disabled in the staging slot (slot-sticky), so that only production collects, reacts to blobs and scales the pool.')
param stagingDisabledFunctions array = ['collect_data_timer', 'data_blob_trigger', 'pool_scaler_timer']

@minValue(1)
@maxValue(99)
@description('Resource id of the action group that the pool\'s alert rules notify; empty to notify nobody.')
param alertActionGroupId string = ''

@description('Daily budget for billed pool VM time (alert when over it), in the currency of poolVmHourlyPrice; 0 turns it off.')
param dailyBudget string = '50'

@description('Price of one pool VM hour, for the daily budget alert.')
param poolVmHourlyPrice string = '0.096'

@description('Number of pool VMs, named vm01..vmNN (POOL_VMS).')
param poolVmCount int = 3

@minValue(0)
@maxValue(99)
@description('Number of spot pool VMs besides them, named spot01..spotNN (POOL_SPOT_VMS): started first, evicted VMs fall back to the on-demand ones.')
param poolSpotVmCount int = 0

@description('billingProfile.maxPrice of the spot VMs, USD per hour; -1 pays up to the on-demand price (evicted only for capacity).')
param poolSpotMaxPrice string = '-1'

@description('Size of each pool VM.')
param poolVmSize string = 'Standard_D2s_v5'

@description('Image of the pool VMs (an imageReference: publisher, offer, sku, version).')
param poolVmImage object = {
  publisher: 'Canonical'
  offer: 'ubuntu-24_04-lts'
  sku: 'server'
  version: 'latest'
}

@description('Give each pool VM a public IP. Off by default: VMs reach Azure through the NAT gateway.')
param poolPublicIpEnabled bool = false

@description('Let the app provision VMs (pool.add/pool.remove): adds write rights to its custom role.')
param poolAddEnabled bool = false

@description('Admin user of the pool VMs (SSH key only).')
param vmAdminUsername string = 'azureuser'

@description('SSH public key of the pool VMs\' admin user (the preprovision hook, scripts/azd_hooks.py, creates one when unset).')
param vmAdminSshPublicKey string

@secure()
@description('HMAC key for work-item tokens; stored in Key Vault (azd reads the existing one back on re-provision).')
param callbackSigningKey string

@secure()
@description('Host key the agents present to the app (host key `vmagent`); stored in Key Vault, set on the app after deployment.')
param agentFunctionKey string

@description('PIPELINE_ACTIONS: the steps each file goes through, in order (comma separated); each needs an entry in agentActions.')
param pipelineActions string = 'process'

@description('AGENT_ACTIONS for the pool VMs: action name -> command with {input} and {output}. One entry per PIPELINE_ACTIONS step.')
param agentActions object = { process: 'cp {input} {output}' }

@description('Check that VM callbacks come from the VM\'s own address. Off: VMs call out through the NAT gateway, so the app sees its address; the HMAC token and the step claim still authenticate each callback.')
param checkCallerIp bool = false

@description('Extra app settings merged over the defaults (for example a different COLLECT_SCHEDULE).')
param appSettingOverrides object = {}

@description('Key Vault purge protection (irreversible). Off: after azd down the vault can be purged or recovered, so azd up can reuse its name.')
param keyVaultPurgeProtection bool = false

@allowed(['default', 'recover'])
@description('recover: restore the soft-deleted vault of this environment (the preprovision hook sets it when one exists).')
param keyVaultCreateMode string = 'default'

@description('Current time; used to set the signing secret\'s expiry one year ahead.')
param deploymentTime string = utcNow()

var abbrs = loadJsonContent('./abbreviations.json')
var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var functionAppName = '${abbrs.webSitesFunctions}${resourceToken}'
var deploymentContainerName = 'app-package-${take(resourceToken, 20)}'
var isFlex = hostingPlan == 'FlexConsumption'
var agentPackageContainer = 'agent-package'

// Storage names: the same values the app reads from its settings (shared/settings.py defaults).
var names = {
  dataContainer: 'data'
  resultsContainer: 'results'
  archiveContainer: 'archive'
  failedContainer: 'failed'
  workQueue: 'work'
  vmTable: 'tblvm'
  logTable: 'tbllog'
  resultTable: 'tblresult'
  runTable: 'tblrun'
  changeTable: 'tblchange'
  claimTable: 'tblclaim'
  idempotencyTable: 'tblidem'
  webhookTable: 'tblhook'
}
var vmNames = [for i in range(1, poolVmCount): 'vm${padLeft(i, 2, '0')}']
var spotVmNames = [for i in range(1, poolSpotVmCount): 'spot${padLeft(i, 2, '0')}']

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}'
  location: location
  tags: tags
}

// The pool lives in its own resource group so the app's custom role is scoped to VMs only.
resource poolRg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: '${abbrs.resourcesResourceGroups}${environmentName}-pool'
  location: location
  tags: tags
}

module appIdentity 'core/security/identity.bicep' = {
  name: 'app-identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}app-${resourceToken}'
    location: location
    tags: tags
  }
}

module vmIdentity 'core/security/identity.bicep' = {
  name: 'vm-identity'
  scope: rg
  params: {
    name: '${abbrs.managedIdentityUserAssignedIdentities}vm-${resourceToken}'
    location: location
    tags: tags
  }
}

module storage 'core/storage/storage-account.bicep' = {
  name: 'storage'
  scope: rg
  params: {
    name: '${abbrs.storageStorageAccounts}${resourceToken}'
    location: location
    tags: tags
    containers: [
      names.dataContainer
      names.resultsContainer
      names.archiveContainer
      names.failedContainer
      deploymentContainerName
      agentPackageContainer
    ]
    queues: [names.workQueue, '${names.workQueue}-poison']
    tables: [
      names.vmTable
      names.logTable
      names.resultTable
      names.runTable
      names.changeTable
      names.claimTable
      names.idempotencyTable
      names.webhookTable
    ]
    eventGridTopicName: '${abbrs.eventGridSystemTopics}${resourceToken}'
  }
}

module monitoring 'core/monitor/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: '${abbrs.operationalInsightsWorkspaces}${resourceToken}'
    applicationInsightsName: '${abbrs.insightsComponents}${resourceToken}'
    location: location
    tags: tags
  }
}

module poolMonitoring 'core/monitor/pool-monitoring.bicep' = {
  name: 'pool-monitoring'
  scope: rg
  params: {
    location: location
    tags: tags
    logAnalyticsId: monitoring.outputs.logAnalyticsId
    actionGroupId: alertActionGroupId
    dailyBudget: dailyBudget
    vmHourlyPrice: poolVmHourlyPrice
  }
}

module keyVault 'core/security/keyvault.bicep' = {
  name: 'keyvault'
  scope: rg
  params: {
    name: '${abbrs.keyVaultVaults}${resourceToken}'
    location: location
    tags: tags
    purgeProtection: keyVaultPurgeProtection
    createMode: keyVaultCreateMode
    callbackSigningKey: callbackSigningKey
    agentFunctionKey: agentFunctionKey
    secretExpiry: dateTimeToEpoch(dateTimeAdd(deploymentTime, 'P1Y'))
    readerPrincipalId: appIdentity.outputs.principalId
    adminPrincipalId: principalId
    adminPrincipalType: principalType
  }
}

module storageRoles 'app/rbac.bicep' = {
  name: 'storage-roles'
  scope: rg
  params: {
    storageAccountName: storage.outputs.name
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appPrincipalId: appIdentity.outputs.principalId
    vmPrincipalId: vmIdentity.outputs.principalId
    userPrincipalId: principalId
    userPrincipalType: principalType
  }
}

var agentPackageUrl = 'https://${storage.outputs.name}.blob.${environment().suffixes.storage}/${agentPackageContainer}/vmpool-agent.tar.gz'
// The app's URL is its defaultHostName (the cloud and the naming scheme decide it: it is not
// always the app name plus the public cloud's suffix), known once the app exists: the pool VMs are created after it, and
// the app's own POOL_AGENT_API_BASE_URL is set in app/api.bicep from the same property.
var poolVnetName = 'vnet-pool-${resourceToken}'
var poolSubnetName = 'pool'

module pool 'app/vmpool.bicep' = {
  name: 'vmpool'
  scope: poolRg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    vmNames: concat(vmNames, spotVmNames)
    spotVmNames: spotVmNames
    spotMaxPrice: poolSpotMaxPrice
    vmSize: poolVmSize
    vmImage: poolVmImage
    publicIpEnabled: poolPublicIpEnabled
    adminUsername: vmAdminUsername
    adminSshPublicKey: vmAdminSshPublicKey
    vmIdentityId: vmIdentity.outputs.id
    vmIdentityClientId: vmIdentity.outputs.clientId
    storageAccountName: storage.outputs.name
    workQueue: names.workQueue
    resultsContainer: names.resultsContainer
    claimTable: names.claimTable
    vmTable: names.vmTable
    agentFunctionKey: agentFunctionKey
    agentActions: agentActions
    agentPackageUrl: agentPackageUrl
    agentPackageContainer: agentPackageContainer
    appBaseUrl: api.outputs.uri
    vnetName: poolVnetName
    subnetName: poolSubnetName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
  }
}

module poolRole 'app/pool-role.bicep' = {
  name: 'pool-role'
  scope: poolRg
  params: {
    appPrincipalId: appIdentity.outputs.principalId
    poolAddEnabled: poolAddEnabled
  }
}

// Every setting the app reads (shared/settings.py), with its Azure value. Slot-specific values
// (TASKHUB_NAME, POOL_BACKEND, disabled functions) are in `stagingSettings` and are slot-sticky.
var appSettings = union({
  STORAGE_CONNECTION: 'AzureWebJobsStorage'
  TASKHUB_NAME: taskHubName
  DATA_CONTAINER: names.dataContainer
  RESULTS_CONTAINER: names.resultsContainer
  ARCHIVE_CONTAINER: names.archiveContainer
  FAILED_CONTAINER: names.failedContainer
  WORK_QUEUE: names.workQueue
  VM_TABLE: names.vmTable
  LOG_TABLE: names.logTable
  RESULT_TABLE: names.resultTable
  RUN_TABLE: names.runTable
  CHANGE_TABLE: names.changeTable
  CLAIM_TABLE: names.claimTable
  IDEMPOTENCY_TABLE: names.idempotencyTable
  IDEMPOTENCY_RETENTION_SECONDS: '86400'
  WEBHOOK_TABLE: names.webhookTable
  // Empty: requests with a callbackUrl are refused. To turn webhooks on, store a key in Key
  // Vault and set a @Microsoft.KeyVault(SecretUri=...) reference here (see docs/webhooks.md).
  WEBHOOK_SIGNING_KEY: ''
  WEBHOOK_ALLOW_HOSTS: ''
  WEBHOOK_MAX_ATTEMPTS: '5'
  WEBHOOK_BACKOFF_SECONDS: '10'
  // hourly price per VM size for cost in money (size[:priority]=price,...); empty = seconds
  VM_PRICES: ''
  POOL_BACKEND: 'azure'
  POOL_VMS: poolVmCount == 1 ? 'vm01' : 'vm01..${last(vmNames)}'
  POOL_MAX_RUNNING: string(poolVmCount + poolSpotVmCount)
  POOL_MIN_RUNNING: '0'
  POOL_SPOT_VMS: join(spotVmNames, ',')
  POOL_SPOT_MAX_PRICE: poolSpotMaxPrice
  SPOT_BACKOFF_SECONDS: '900'
  VM_SLOTS: '1'
  BOOT_TIMEOUT_SECONDS: '600'
  IDLE_COOLDOWN_SECONDS: '120'
  HEARTBEAT_TIMEOUT_SECONDS: '300'
  PIPELINE_ACTIONS: pipelineActions
  JOB_TIMEOUT_SECONDS: '3600'
  MAX_ATTEMPTS: '3'
  RETRY_BACKOFF_SECONDS: '30'
  KEEP_ORIGINALS: 'true'
  COLLECT_SCHEDULE: '0 0 */4 * * *'
  COLLECT_SOURCE: 'sample'
  SCALER_SCHEDULE: '*/30 * * * * *'
  BLOB_TRIGGER_SOURCE: 'EventGrid'
  CALLBACK_SIGNING_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.callbackSecretUri})'
  CHECK_CALLER_IP: checkCallerIp ? 'true' : 'false'
  MAX_BODY_BYTES: '1048576'
  AZURE_SUBSCRIPTION_ID: subscription().subscriptionId
  POOL_RESOURCE_GROUP: poolRg.name
  // azure backend: where ARM is, and what a VM added by a pool.add change gets
  ARM_ENDPOINT: environment().resourceManager
  POOL_LOCATION: location
  POOL_VM_SIZE: poolVmSize
  POOL_VM_IMAGE: '${poolVmImage.publisher}:${poolVmImage.offer}:${poolVmImage.sku}:${poolVmImage.version}'
  // computed, not pool.outputs.subnetId: the pool module waits for the app (its URL)
  POOL_SUBNET_ID: resourceId(subscription().subscriptionId, poolRg.name, 'Microsoft.Network/virtualNetworks/subnets', poolVnetName, poolSubnetName)
  POOL_ADMIN_USERNAME: vmAdminUsername
  POOL_SSH_PUBLIC_KEY: vmAdminSshPublicKey
  POOL_PUBLIC_IP: poolPublicIpEnabled ? 'true' : 'false'
  // ...and its agent (the same settings vmpool.bicep gives vm01..vmNN)
  POOL_VM_IDENTITY_ID: vmIdentity.outputs.id
  POOL_VM_IDENTITY_CLIENT_ID: vmIdentity.outputs.clientId
  POOL_AGENT_PACKAGE_URL: agentPackageUrl
  POOL_AGENT_FUNCTION_KEY: '@Microsoft.KeyVault(SecretUri=${keyVault.outputs.agentKeySecretUri})'
  POOL_AGENT_ACTIONS: string(agentActions)
  // local backend only (not used in Azure); set to their defaults so nothing is left unset
  LOCAL_AGENT_COMMAND: 'python -m agent'
  LOCAL_STATE_DIR: ''
  LOCAL_STOP_GRACE_SECONDS: '30'
  LOCAL_BOOT_SECONDS: '0'
  LOCAL_DEALLOCATE_SECONDS: '0'
  LOCAL_AGENT_API_BASE_URL: 'http://127.0.0.1:7071/api'
  LOCAL_AGENT_FUNCTION_KEY: ''
}, appSettingOverrides)

// AzureWebJobs.<function>.Disabled per slot. (Built as JSON text: the object-from-array lambdas
// are not understood by the template scanner.)
var disabledOff = [for f in stagingDisabledFunctions: '"AzureWebJobs.${f}.Disabled":"false"']
var disabledOn = [for f in stagingDisabledFunctions: '"AzureWebJobs.${f}.Disabled":"true"']
var disabledNames = [for f in stagingDisabledFunctions: 'AzureWebJobs.${f}.Disabled']
var disabledProduction = json('{${join(disabledOff, ',')}}')
var disabledStaging = json('{${join(disabledOn, ',')}}')
var productionSticky = union({ TASKHUB_NAME: taskHubName, POOL_BACKEND: 'azure' }, disabledProduction)
var stagingSticky = union({ TASKHUB_NAME: stagingTaskHubName, POOL_BACKEND: 'external' }, disabledStaging)
var stickySettingNames = concat(['TASKHUB_NAME', 'POOL_BACKEND'], disabledNames)

module api 'app/api.bicep' = {
  name: 'api'
  scope: rg
  params: {
    name: functionAppName
    planName: '${abbrs.webServerFarms}${resourceToken}'
    location: location
    tags: tags
    serviceName: 'api'
    hostingPlan: hostingPlan
    elasticPremiumSku: elasticPremiumSku
    pythonVersion: pythonVersion
    identityId: appIdentity.outputs.id
    identityClientId: appIdentity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    appSettings: union(appSettings, productionSticky)
    stagingSlotSettings: union(appSettings, stagingSticky)
    stickySettingNames: stickySettingNames
  }
  dependsOn: [storageRoles, keyVault]
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output POOL_RESOURCE_GROUP string = poolRg.name
output AZURE_FUNCTION_NAME string = api.outputs.name
output AZURE_FUNCTION_URL string = api.outputs.uri
output AZURE_FUNCTION_HOST_NAME string = api.outputs.hostName
output AZURE_FUNCTION_HAS_STAGING_SLOT bool = !isFlex
output AZURE_STORAGE_ACCOUNT_NAME string = storage.outputs.name
output AZURE_STORAGE_SUFFIX string = environment().suffixes.storage
output AZURE_EVENTGRID_TOPIC_NAME string = storage.outputs.eventGridTopicName
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output DATA_CONTAINER string = names.dataContainer
output POOL_VMS string = join(vmNames, ',')
output APPLICATIONINSIGHTS_CONNECTION_STRING string = monitoring.outputs.connectionString
