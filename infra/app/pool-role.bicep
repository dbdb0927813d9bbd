// A least-privilege custom role for the app over the pool's resource group, and its assignment.
// Always: read VMs (and their power state), NICs and public IPs; start and deallocate VMs.
// With poolAddEnabled: also create/delete VMs, NICs, public IPs and disks and join the pool
// subnet (pool.add / pool.remove changes).
targetScope = 'resourceGroup'

param appPrincipalId string
param poolAddEnabled bool = false

var operateActions = [
  'Microsoft.Compute/virtualMachines/read'
  'Microsoft.Compute/virtualMachines/instanceView/read'
  'Microsoft.Compute/virtualMachines/start/action'
  'Microsoft.Compute/virtualMachines/deallocate/action'
  'Microsoft.Network/networkInterfaces/read'
  'Microsoft.Network/publicIPAddresses/read'
]
var provisionActions = [
  'Microsoft.Compute/virtualMachines/write'
  'Microsoft.Compute/virtualMachines/delete'
  'Microsoft.Compute/disks/read'
  'Microsoft.Compute/disks/write'
  'Microsoft.Compute/disks/delete'
  'Microsoft.Network/networkInterfaces/write'
  'Microsoft.Network/networkInterfaces/delete'
  'Microsoft.Network/networkInterfaces/join/action'
  'Microsoft.Network/publicIPAddresses/write'
  'Microsoft.Network/publicIPAddresses/delete'
  'Microsoft.Network/publicIPAddresses/join/action'
  'Microsoft.Network/virtualNetworks/read'
  'Microsoft.Network/virtualNetworks/subnets/read'
  'Microsoft.Network/virtualNetworks/subnets/join/action'
  'Microsoft.Network/networkSecurityGroups/join/action'
  'Microsoft.Network/locations/operations/read'
  'Microsoft.Compute/locations/operations/read'
]

// One definition whose actions follow poolAddEnabled: re-provisioning with it off removes the
// write rights again (the definition is updated in place; its assignment stays).
var roleName = guid(resourceGroup().id, 'vmpool-operator')

resource poolOperator 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: roleName
  properties: {
    roleName: 'VM pool operator (${resourceGroup().name})'
    description: 'Lets the VM pool app read, start and deallocate the pool VMs${poolAddEnabled ? ', and create or delete them' : ''}.'
    type: 'CustomRole'
    assignableScopes: [resourceGroup().id]
    permissions: [
      {
        actions: poolAddEnabled ? concat(operateActions, provisionActions) : operateActions
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
  }
}

resource poolOperatorAssignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, appPrincipalId, roleName)
  properties: {
    principalId: appPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: poolOperator.id
  }
}

output roleDefinitionId string = poolOperator.id
