// The function app: Flex Consumption (default) or Elastic Premium with a `staging` slot.
// Storage is identity-based (AzureWebJobsStorage__*) with the user-assigned identity; telemetry
// goes to Application Insights with Entra ID auth; secrets are Key Vault references resolved with
// the same identity. Flex Consumption has no deployment slots: the staging slot (and so the
// status-check release of docs/deployment.md) exists only on Elastic Premium.
param name string
param planName string
param location string
param tags object = {}

@description('azd service this app deploys (tag azd-service-name, on the production site only).')
param serviceName string = 'api'

@allowed(['FlexConsumption', 'ElasticPremium'])
param hostingPlan string = 'FlexConsumption'
param elasticPremiumSku string = 'EP1'
param pythonVersion string = '3.11'

param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsName string

@description('App settings of the production slot (the app\'s own settings, production values).')
param appSettings object

@description('App settings of the staging slot (Elastic Premium only).')
param stagingSlotSettings object

@description('Settings that stay with their slot on swap (slot-sticky).')
param stickySettingNames array

@description('Flex Consumption: instance memory and the most instances the app may scale to.')
param instanceMemoryMB int = 2048
param maximumInstanceCount int = 40

var isFlex = hostingPlan == 'FlexConsumption'
var storageSuffix = environment().suffixes.storage

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Host storage with the managed identity: no connection string, no key.
var hostSettings = {
  AzureWebJobsStorage__blobServiceUri: 'https://${storage.name}.blob.${storageSuffix}'
  AzureWebJobsStorage__queueServiceUri: 'https://${storage.name}.queue.${storageSuffix}'
  AzureWebJobsStorage__tableServiceUri: 'https://${storage.name}.table.${storageSuffix}'
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  // Azure SDK clients in the app (the azure pool backend) use the same identity.
  AZURE_CLIENT_ID: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsights.properties.ConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // The Python worker sends its logs and traces with OpenTelemetry (azure-monitor-opentelemetry).
  PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY: 'true'
}

// What the app tells the VMs it provisions (pool.add) about itself: its own URL, from the site's
// defaultHostName (the same value the pool VMs of vmpool.bicep get through main.bicep).
var selfSettings = {
  POOL_AGENT_API_BASE_URL: 'https://${functionApp.properties.defaultHostName}'
}

// Elastic Premium needs the runtime in app settings (Flex takes it from functionAppConfig and
// refuses these). No Azure Files content share: it would need a storage key, and shared keys are
// off; the app runs from its deployment package instead (remote build).
var premiumSettings = isFlex ? {} : {
  FUNCTIONS_EXTENSION_VERSION: '~4'
  FUNCTIONS_WORKER_RUNTIME: 'python'
  SCM_DO_BUILD_DURING_DEPLOYMENT: 'true'
  ENABLE_ORYX_BUILD: 'true'
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy needs at least three always-on instances, a cost this on-demand app avoids; Flex Consumption sets it differently
  // checkov:skip=CKV_AZURE_211: Flex Consumption (FC1) and Elastic Premium SKUs are not the App Service SKUs this check knows
  name: planName
  location: location
  tags: tags
  kind: isFlex ? 'functionapp' : 'elastic'
  sku: isFlex ? { name: 'FC1', tier: 'FlexConsumption' } : { name: elasticPremiumSku, tier: 'ElasticPremium' }
  properties: {
    reserved: true
    maximumElasticWorkerCount: isFlex ? null : 20
    zoneRedundant: false
  }
}

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: public by design: ITSM callers, the Event Grid webhook and the pool VMs (through their NAT gateway) call it; every route but health needs a function key
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys; Event Grid webhook delivery cannot present a client certificate
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero by design; on Elastic Premium the plan keeps a pre-warmed instance
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      linuxFxVersion: isFlex ? null : 'Python|${pythonVersion}'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      healthCheckPath: isFlex ? null : '/api/health' // Flex Consumption has no health check
      alwaysOn: false
      httpLoggingEnabled: true
      detailedErrorLoggingEnabled: true
      requestTracingEnabled: true
    }
    functionAppConfig: isFlex ? {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: 'https://${storage.name}.blob.${storageSuffix}/${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    } : null
  }

  resource settings 'config' = {
    // checkov:skip=CKV_AZURE_13: false positive: app settings are not a web app (the site is checked above); the API authenticates with function keys
    // checkov:skip=CKV_AZURE_63: false positive: HTTP logging is on in the site's siteConfig
    // checkov:skip=CKV_AZURE_65: false positive: detailed errors are on in the site's siteConfig
    // checkov:skip=CKV_AZURE_66: false positive: request tracing is on in the site's siteConfig
    // checkov:skip=CKV_AZURE_80: false positive: a Python app, no .NET Framework
    // checkov:skip=CKV_AZURE_88: no Azure Files content share: it needs a storage key and shared keys are off
    // checkov:skip=CKV_AZURE_222: false positive: see the site's skip
    name: 'appsettings'
    properties: union(hostSettings, premiumSettings, selfSettings, appSettings)
  }
}

// Elastic Premium only: the staging slot, and the settings that stay with their slot on swap.
module staging 'staging-slot.bicep' = if (!isFlex) {
  name: 'staging-slot'
  params: {
    appName: functionApp.name
    planId: plan.id
    location: location
    tags: tags
    identityId: identityId
    pythonVersion: pythonVersion
    appSettings: union(hostSettings, premiumSettings, selfSettings, stagingSlotSettings)
    stickySettingNames: stickySettingNames
  }
}

output name string = functionApp.name
output hostName string = functionApp.properties.defaultHostName
output uri string = 'https://${functionApp.properties.defaultHostName}'
