// The app's storage account: Entra ID only (shared keys off), the containers, queues and tables
// the app uses, and the Event Grid system topic that feeds the blob trigger.
param name string
param location string
param tags object = {}
param containers array
param queues array
param tables array
param eventGridTopicName string

@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_GZRS'])
param skuName string = 'Standard_ZRS'

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: the Flex Consumption app (no VNet integration) and Event Grid reach it over the public endpoint; access is Entra ID only (shared keys off)
  // checkov:skip=CKV_AZURE_59: same reason as CKV_AZURE_35
  // checkov:skip=CKV2_AZURE_33: no private endpoint, same reason as CKV_AZURE_35
  // checkov:skip=CKV2_AZURE_1: Microsoft-managed keys with infrastructure encryption; customer-managed keys would need a key and its own identity for one app
  // checkov:skip=CKV_AZURE_206: zone-redundant (ZRS) by default; geo-replication is a cost choice left to skuName
  // checkov:skip=CKV_AZURE_33: queue logging goes to Azure Monitor diagnostic settings, not classic storage analytics (which needs shared keys)
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: skuName }
  properties: {
    accessTier: 'Hot'
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      requireInfrastructureEncryption: true
      services: {
        blob: { enabled: true, keyType: 'Account' }
        file: { enabled: true, keyType: 'Account' }
        queue: { enabled: true, keyType: 'Account' }
        table: { enabled: true, keyType: 'Account' }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: { enabled: true, days: 7 }
    containerDeleteRetentionPolicy: { enabled: true, days: 7 }
  }
}

resource blobContainers 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = [for container in containers: {
  parent: blobService
  name: container
  properties: { publicAccess: 'None' }
}]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource storageQueues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in queues: {
  parent: queueService
  name: queue
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource storageTables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tables: {
  parent: tableService
  name: table
}]

// The blob trigger on Flex Consumption uses the Event Grid source. The topic is created here; its
// BlobCreated subscription to the app's blobs extension webhook is created after code deployment
// by the postdeploy hook, scripts/azd_hooks.py (the webhook needs the blobs_extension system key).
resource eventGridTopic 'Microsoft.EventGrid/systemTopics@2024-06-01-preview' = {
  name: eventGridTopicName
  location: location
  tags: tags
  properties: {
    source: storage.id
    topicType: 'Microsoft.Storage.StorageAccounts'
  }
}

output name string = storage.name
output id string = storage.id
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output eventGridTopicName string = eventGridTopic.name
