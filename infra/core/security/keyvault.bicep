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

// Purge protection keeps a deleted vault's name taken for the whole retention (90 days), and
// cannot be turned off again: a fixed-name vault with it would block `azd up` after `azd down`
// that long. Off by default (soft delete stays on); turn it on for an environment that must
// never lose its secrets.
@description('Turn on purge protection (irreversible; the name stays taken for 90 days after deletion).')
param purgeProtection bool = false

// `recover` brings back a soft-deleted vault of this name (after `azd down` without --purge);
// scripts/azd_hooks.py preprovision picks it when such a vault exists.
@allowed(['default', 'recover'])
@description('default: create the vault; recover: restore the soft-deleted vault of this name.')
param createMode string = 'default'

var secretsUserRole = '4633458b-17de-408a-b874-0445c86b69e6'
var secretsOfficerRole = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: public endpoint with RBAC-only access; the Flex Consumption app has no VNet integration to reach a private endpoint
  // checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109
  // checkov:skip=CKV2_AZURE_32: no private endpoint, same reason as CKV_AZURE_109
  // checkov:skip=CKV_AZURE_110: purge protection is a parameter (purgeProtection), off by default so that azd down and azd up can reuse the vault name; soft delete stays on
  // checkov:skip=CKV_AZURE_42: recoverable through soft delete (90 days); purge protection is the purgeProtection parameter, see CKV_AZURE_110
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    createMode: createMode
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    // The service accepts only true here (or the property left out): null leaves it off.
    enablePurgeProtection: purgeProtection ? true : null
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
