// The VM pool: a VNet with one subnet (NSG, NAT gateway for outbound), and N Linux VMs named
// vm01..vmNN, each with a NIC (no public IP by default) and the shared VM identity. What a pool
// VM is comes from shared/pool/vm/ (profile.json: identity kind, disk, Trusted Launch, Linux
// settings; cloud-init.yaml: the agent as a systemd service), the same files pool.add builds its
// VMs from (shared/pool/vmspec.py). Each VM's agent settings are its userData. Bicep cannot leave a VM deallocated: every VM boots once, its agent finds no work
// and asks to go idle, and the app's scaler deallocates idle VMs on its first pass.
param location string
param tags object = {}
param resourceToken string
param vmNames array
@description('Which of vmNames are Azure Spot VMs (priority Spot, evictionPolicy Deallocate).')
param spotVmNames array = []
@description('billingProfile.maxPrice of the spot VMs, USD per hour; -1: up to the on-demand price.')
param spotMaxPrice string = '-1'
param vmSize string
@description('Files each VM works on at once (VM_SLOTS).')
param vmSlots int = 1

@description('imageReference of the VMs: publisher, offer, sku, version')
param vmImage object
param publicIpEnabled bool = false
param adminUsername string
param adminSshPublicKey string
param vmIdentityId string
param vmIdentityClientId string
param storageAccountName string
param workQueue string
param resultsContainer string
param claimTable string
param vmTable string
param appBaseUrl string

@description('Application Insights connection string the agents export their records to; empty for none.')
param applicationInsightsConnectionString string = ''

@description('Container of agent releases (release.json); the agents upgrade from it when idle.')
param agentPackageContainer string = 'agent-package'

@description('Blob URL of the agent tarball (uploaded by the postprovision hook, scripts/azd_hooks.py); fetched with the VM identity.')
param agentPackageUrl string

@secure()
@description('Host key the agents present to the app API (set on the app as host key vmagent by the postdeploy hook, scripts/azd_hooks.py).')
param agentFunctionKey string

@description('AGENT_ACTIONS: action name -> command template with {input} and {output}.')
param agentActions object

@description('Address space of the pool VNet.')
@description('Name of the pool\'s virtual network and of its subnet (main.bicep derives POOL_SUBNET_ID from them).')
param vnetName string
param subnetName string = 'pool'

param addressPrefix string = '10.40.0.0/16'
param subnetPrefix string = '10.40.0.0/24'

var vmProfile = loadJsonContent('../../shared/pool/vm/profile.json')
var cloudInit = loadTextContent('../../shared/pool/vm/cloud-init.yaml')
var storageSuffix = environment().suffixes.storage
// What a spot member adds to a VM (shared/pool/vm/profile.json's spot block, as pool.add does).
var spotProperties = {
  priority: vmProfile.spot.priority
  evictionPolicy: vmProfile.spot.evictionPolicy
  billingProfile: { maxPrice: json(spotMaxPrice) }
}

resource nsg 'Microsoft.Network/networkSecurityGroups@2024-01-01' = {
  name: 'nsg-pool-${resourceToken}'
  location: location
  tags: tags
  properties: {
    // No inbound rule: the agents only call out (storage, the app). Administrators use
    // Azure Bastion or a just-in-time rule when they need SSH.
    securityRules: []
  }
}

resource natIp 'Microsoft.Network/publicIPAddresses@2024-01-01' = {
  name: 'pip-nat-${resourceToken}'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: {
    publicIPAllocationMethod: 'Static'
  }
}

// Outbound for VMs without public IPs (new subnets get no default outbound access).
resource nat 'Microsoft.Network/natGateways@2024-01-01' = {
  name: 'ng-pool-${resourceToken}'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: {
    idleTimeoutInMinutes: 10
    publicIpAddresses: [{ id: natIp.id }]
  }
}

resource vnet 'Microsoft.Network/virtualNetworks@2024-01-01' = {
  name: vnetName
  location: location
  tags: tags
  properties: {
    addressSpace: { addressPrefixes: [addressPrefix] }
    subnets: [
      {
        name: subnetName
        properties: {
          addressPrefix: subnetPrefix
          networkSecurityGroup: { id: nsg.id }
          natGateway: { id: nat.id }
          defaultOutboundAccess: false
          serviceEndpoints: [{ service: 'Microsoft.Storage' }]
        }
      }
    ]
  }
}

resource publicIps 'Microsoft.Network/publicIPAddresses@2024-01-01' = [for name in vmNames: if (publicIpEnabled) {
  name: '${name}-pip'
  location: location
  tags: tags
  sku: { name: 'Standard' }
  properties: {
    publicIPAllocationMethod: 'Static'
  }
}]

resource nics 'Microsoft.Network/networkInterfaces@2024-01-01' = [for (name, i) in vmNames: {
  name: '${name}-nic'
  location: location
  tags: tags
  properties: {
    enableAcceleratedNetworking: vmProfile.nic.enableAcceleratedNetworking
    enableIPForwarding: vmProfile.nic.enableIPForwarding
    ipConfigurations: [
      {
        name: 'ipconfig1'
        properties: {
          privateIPAllocationMethod: 'Dynamic'
          subnet: { id: vnet.properties.subnets[0].id }
          publicIPAddress: publicIpEnabled ? { id: publicIps[i].id } : null
        }
      }
    ]
  }
}]

// Each VM's agent configuration (the agent's AGENT_* variables) as an environment file, the
// VM's userData: cloud-init's vmpool-agent-settings writes it to /etc/vmpool-agent/agent.env
// before every agent start, so a changed userData takes effect without re-creating the VM.
// shared/pool/vmspec.py agent_env() writes the same names for VMs from pool.add.
var agentEnv = [for name in vmNames: join([
  'AGENT_VM_NAME=${name}'
  'AGENT_API_BASE_URL=${appBaseUrl}'
  'AGENT_FUNCTION_KEY=${agentFunctionKey}'
  'AGENT_ACTIONS=${string(agentActions)}'
  'AGENT_SLOTS=${vmSlots}'
  'AGENT_STORAGE__blobServiceUri=https://${storageAccountName}.blob.${storageSuffix}'
  'AGENT_STORAGE__queueServiceUri=https://${storageAccountName}.queue.${storageSuffix}'
  'AGENT_STORAGE__tableServiceUri=https://${storageAccountName}.table.${storageSuffix}'
  'AGENT_STORAGE__credential=managedidentity'
  'AGENT_STORAGE__clientId=${vmIdentityClientId}'
  'AGENT_WORK_QUEUE=${workQueue}'
  'AGENT_RESULTS_CONTAINER=${resultsContainer}'
  'AGENT_CLAIM_TABLE=${claimTable}'
  'AGENT_VM_TABLE=${vmTable}'
  'AZURE_CLIENT_ID=${vmIdentityClientId}'
  'VMPOOL_AGENT_PACKAGE_URL=${agentPackageUrl}'
  'AGENT_PACKAGE_CONTAINER=${agentPackageContainer}'
  'AGENT_INSTALL_DIR=/opt/vmpool-agent'
  contains(spotVmNames, name) ? 'AGENT_SCHEDULED_EVENTS_URL=${vmProfile.spot.scheduledEventsUrl}' : ''
  empty(applicationInsightsConnectionString) ? '' : 'APPLICATIONINSIGHTS_CONNECTION_STRING=${applicationInsightsConnectionString}'
  empty(applicationInsightsConnectionString) ? '' : 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING=ClientId=${vmIdentityClientId};Authorization=AAD'
  ''
], '\n')]

resource vms 'Microsoft.Compute/virtualMachines@2024-07-01' = [for (name, i) in vmNames: {
  // checkov:skip=CKV_AZURE_97: encryption at host needs the EncryptionAtHost feature registered on the subscription; managed disks are encrypted at rest with platform keys anyway
  // checkov:skip=CKV_AZURE_151: same as CKV_AZURE_97 (the check's title says Windows; these are Linux VMs)
  // checkov:skip=CKV_AZURE_1: SSH keys only: disablePasswordAuthentication comes from shared/pool/vm/profile.json (loadJsonContent, which checkov does not read); tests/pool/test_vm_description.py holds it true
  // checkov:skip=CKV_AZURE_149: same as CKV_AZURE_1
  // checkov:skip=CKV_AZURE_178: same as CKV_AZURE_1 (the ssh publicKeys are set below)
  // checkov:skip=CKV_AZURE_50: allowExtensionOperations is false in shared/pool/vm/profile.json; tests/pool/test_vm_description.py checks it
  name: name
  location: location
  tags: union(tags, { 'vmpool-member': name })
  identity: {
    type: vmProfile.identityType
    userAssignedIdentities: { '${vmIdentityId}': {} }
  }
  properties: union({
    hardwareProfile: { vmSize: vmSize }
    osProfile: {
      computerName: name
      adminUsername: adminUsername
      customData: base64(cloudInit)
      linuxConfiguration: union(vmProfile.linuxConfiguration, {
        ssh: {
          publicKeys: [
            {
              path: '/home/${adminUsername}/.ssh/authorized_keys'
              keyData: adminSshPublicKey
            }
          ]
        }
      })
      allowExtensionOperations: vmProfile.allowExtensionOperations
    }
    securityProfile: vmProfile.securityProfile
    userData: base64(agentEnv[i])
    storageProfile: {
      imageReference: vmImage
      osDisk: union(vmProfile.osDisk, { name: '${name}-osdisk' })
    }
    networkProfile: {
      networkInterfaces: [{ id: nics[i].id, properties: { primary: true, deleteOption: 'Delete' } }]
    }
    diagnosticsProfile: vmProfile.diagnosticsProfile
  }, contains(spotVmNames, name) ? spotProperties : {})
}]

output vmNames array = vmNames
output subnetId string = vnet.properties.subnets[0].id
output natPublicIp string = natIp.properties.ipAddress
