// Data-plane roles on the storage account and Application Insights.
// App identity: what the Functions host, Durable Functions (queues + tables), the blob trigger,
// Flex deployment storage and the app's own code need. VM identity: what the agent needs to pull
// work, read inputs, write outputs and claim steps. Deploying user: the same as the app, for checks.
param storageAccountName string
param applicationInsightsName string
param appPrincipalId string
param vmPrincipalId string
param userPrincipalId string = ''
param userPrincipalType string = 'User'

var roles = {
  blobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  blobDataContributor: 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
  queueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  tableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

// Blob Data Owner covers the host's keys and leases, the blob trigger's receipts, the app's
// containers and the Flex Consumption deployment package container.
var appStorageRoles = [roles.blobDataOwner, roles.queueDataContributor, roles.tableDataContributor]
// Queue Data Contributor rather than Queue Data Message Processor: the agent's heartbeat extends a
// message's visibility (an update, which Message Processor does not allow) and it moves poison
// messages to work-poison.
var vmStorageRoles = [roles.blobDataContributor, roles.queueDataContributor, roles.tableDataContributor]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

resource appStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in appStorageRoles: {
  name: guid(storage.id, appPrincipalId, role)
  scope: storage
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

resource vmStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in vmStorageRoles: {
  name: guid(storage.id, vmPrincipalId, role)
  scope: storage
  properties: {
    principalId: vmPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

resource userStorage 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in appStorageRoles: if (!empty(userPrincipalId)) {
  name: guid(storage.id, userPrincipalId, role)
  scope: storage
  properties: {
    principalId: userPrincipalId
    principalType: userPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

// Telemetry with Entra ID auth (Application Insights local auth is off): the app, and the
// agents on the VMs (their logs and action stderr records).
resource vmTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, vmPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    principalId: vmPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}

resource appTelemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, appPrincipalId, roles.monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
  }
}
