// The `staging` slot of an Elastic Premium function app, and the slot-sticky setting names.
// A release deploys here, waits until production has no running orchestration
// (scripts/wait_for_drain.py), then swaps. Sticky settings stay with their slot: each slot keeps
// its own Durable task hub, and only production collects data and drives the VM pool.
param appName string
param planId string
param location string
param tags object = {}
param identityId string
param pythonVersion string
param appSettings object
param stickySettingNames array

resource functionApp 'Microsoft.Web/sites@2024-04-01' existing = {
  name: appName
}

resource slotConfigNames 'Microsoft.Web/sites/config@2024-04-01' = {
  // checkov:skip=CKV_AZURE_13: false positive: slotConfigNames is a list of setting names, not a web app
  // checkov:skip=CKV_AZURE_63: false positive, as CKV_AZURE_13
  // checkov:skip=CKV_AZURE_65: false positive, as CKV_AZURE_13
  // checkov:skip=CKV_AZURE_66: false positive, as CKV_AZURE_13
  // checkov:skip=CKV_AZURE_80: false positive, as CKV_AZURE_13
  // checkov:skip=CKV_AZURE_88: false positive, as CKV_AZURE_13
  // checkov:skip=CKV_AZURE_222: false positive, as CKV_AZURE_13
  parent: functionApp
  name: 'slotConfigNames'
  properties: {
    appSettingNames: stickySettingNames
  }
}

resource stagingSlot 'Microsoft.Web/sites/slots@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: public like the production slot (see api.bicep); the gate script calls it with a function key
  // checkov:skip=CKV_AZURE_212: a staging slot runs one instance; it takes production load only after the swap
  parent: functionApp
  name: 'staging'
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: planId
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      linuxFxVersion: 'Python|${pythonVersion}'
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      healthCheckPath: '/api/health'
      alwaysOn: false
      httpLoggingEnabled: true
      detailedErrorLoggingEnabled: true
      requestTracingEnabled: true
    }
  }

  resource settings 'config' = {
    name: 'appsettings'
    properties: appSettings
  }
}

output slotName string = stagingSlot.name
