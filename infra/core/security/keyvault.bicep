// Key Vault (RBAC authorization) holding the callback signing key. The app reads it through a
// Key Vault reference (CALLBACK_SIGNING_KEY) with its user-assigned identity.
param name string
param location string
param tags object = {}

@secure()
param callbackSigningKey string

@secure()
param agentFunctionKey string

@description('Expiry of the secret (epoch seconds); re-provisioning moves it forward.')
param secretExpiry int

@description('Principal that reads the secret (the app identity): Key Vault Secrets User.')
param readerPrincipalId string

@description('Deploying user: Key Vault Secrets Officer, so azd can read the key back. Empty to skip.')
param adminPrincipalId string = ''
param adminPrincipalType string = 'User'

var secretsUserRole = '4633458b-17de-408a-b874-0445c86b69e6'
var secretsOfficerRole = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: public endpoint with RBAC-only access; the Flex Consumption app has no VNet integration to reach a private endpoint
  // checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109
  // checkov:skip=CKV2_AZURE_32: no private endpoint, same reason as CKV_AZURE_109
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource callbackSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'callback-signing-key'
  properties: {
    value: callbackSigningKey
    contentType: 'text/plain; HMAC key for work-item tokens'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource agentKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: vault
  name: 'agent-function-key'
  properties: {
    value: agentFunctionKey
    contentType: 'text/plain; host key vmagent of the function app'
    attributes: {
      enabled: true
      exp: secretExpiry
    }
  }
}

resource readerRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(callbackSecret.id, readerPrincipalId, secretsUserRole)
  scope: callbackSecret
  properties: {
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRole)
  }
}

// The app writes the agents' key into the userData of VMs it creates (pool.add).
resource agentKeyReaderRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(agentKeySecret.id, readerPrincipalId, secretsUserRole)
  scope: agentKeySecret
  properties: {
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsUserRole)
  }
}

resource adminRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(adminPrincipalId)) {
  name: guid(vault.id, adminPrincipalId, secretsOfficerRole)
  scope: vault
  properties: {
    principalId: adminPrincipalId
    principalType: adminPrincipalType
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', secretsOfficerRole)
  }
}

output name string = vault.name
output callbackSecretUri string = callbackSecret.properties.secretUri
output agentKeySecretUri string = agentKeySecret.properties.secretUri
