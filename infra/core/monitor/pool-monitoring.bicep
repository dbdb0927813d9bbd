// What operators look at and are woken by: an Azure Monitor workbook over the app's
// OpenTelemetry metrics and event records (names defined in shared/telemetry.py), and log
// alert rules on them: poison messages, a failed VM, jobs failing above a rate, and a daily
// cost budget for billed VM time. Alerts notify the action group given (none: alerts fire and
// show in the portal, but notify nobody).
param location string
param tags object = {}
param logAnalyticsId string
param workbookName string = 'VM pool'

@description('Resource id of the action group the alerts notify; empty to notify nobody.')
param actionGroupId string = ''

@minValue(0)
@maxValue(100)
@description('Alert when more than this percentage of finished jobs failed in 30 minutes.')
param jobFailurePercent int = 20

@minValue(1)
@description('Ignore the failure rate until at least this many jobs finished in the window.')
param jobFailureMinJobs int = 5

@description('Price of one pool VM hour, in the budget currency (for the daily budget alert).')
param vmHourlyPrice string = '0.096'

@description('Daily budget for billed pool VM time, in the same currency; 0 turns the alert off.')
param dailyBudget string = '50'

var actions = empty(actionGroupId) ? {} : { actionGroups: [actionGroupId] }

// Log Analytics tables of workspace-based Application Insights: AppMetrics (metric name in
// Name, attributes in Properties) and AppTraces (log records, attributes in Properties).
var queries = {
  poison: 'AppMetrics | where Name == "vmpool.queue.depth" and tostring(Properties["queue"]) == "poison" | summarize poison = max(Max) by bin(TimeGenerated, 5m) | where poison > 0'
  vmFailed: 'AppMetrics | where Name == "vmpool.vm.failures" | summarize failures = sum(Sum) by vm = tostring(Properties["vm"]) | where failures > 0'
  jobFailures: 'AppMetrics | where Name == "vmpool.jobs" | summarize failed = sumif(Sum, tostring(Properties["outcome"]) == "failed"), total = sum(Sum) | where total >= ${jobFailureMinJobs} and failed * 100.0 / total > ${jobFailurePercent}'
  dailyCost: 'AppMetrics | where Name == "vmpool.vm.billed" and TimeGenerated >= startofday(now()) | summarize cost = sum(Sum) / 3600.0 * ${vmHourlyPrice} | where ${dailyBudget} > 0 and cost > ${dailyBudget}'
}

resource poisonAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'vmpool-poison-messages'
  location: location
  tags: tags
  properties: {
    displayName: 'VM pool: messages in the poison queue'
    description: 'Work no agent could handle sits in work-poison; inspect and resubmit it.'
    severity: 2
    enabled: true
    scopes: [logAnalyticsId]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [{
        query: queries.poison
        timeAggregation: 'Count'
        operator: 'GreaterThan'
        threshold: 0
        failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
      }]
    }
    autoMitigate: true
    actions: actions
  }
}

resource vmFailedAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'vmpool-vm-failed'
  location: location
  tags: tags
  properties: {
    displayName: 'VM pool: a VM failed'
    description: 'A pool VM did not come up in time or its backend failed; the pool works around it, but it needs a look.'
    severity: 2
    enabled: true
    scopes: [logAnalyticsId]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [{
        query: queries.vmFailed
        timeAggregation: 'Count'
        operator: 'GreaterThan'
        threshold: 0
        dimensions: [{ name: 'vm', operator: 'Include', values: ['*'] }]
        failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
      }]
    }
    autoMitigate: true
    actions: actions
  }
}

resource jobFailureAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'vmpool-job-failure-rate'
  location: location
  tags: tags
  properties: {
    displayName: 'VM pool: jobs failing above ${jobFailurePercent}%'
    description: 'More than ${jobFailurePercent}% of the jobs that finished in 30 minutes failed (at least ${jobFailureMinJobs} jobs).'
    severity: 1
    enabled: true
    scopes: [logAnalyticsId]
    evaluationFrequency: 'PT10M'
    windowSize: 'PT30M'
    criteria: {
      allOf: [{
        query: queries.jobFailures
        timeAggregation: 'Count'
        operator: 'GreaterThan'
        threshold: 0
        failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
      }]
    }
    autoMitigate: true
    actions: actions
  }
}

resource dailyCostAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'vmpool-daily-cost-budget'
  location: location
  tags: tags
  properties: {
    displayName: 'VM pool: billed VM time over the daily budget'
    description: 'Billed pool VM time today, at ${vmHourlyPrice} an hour, is over the daily budget of ${dailyBudget}.'
    severity: 3
    enabled: true
    scopes: [logAnalyticsId]
    evaluationFrequency: 'PT1H'
    windowSize: 'P1D'
    criteria: {
      allOf: [{
        query: queries.dailyCost
        timeAggregation: 'Count'
        operator: 'GreaterThan'
        threshold: 0
        failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
      }]
    }
    autoMitigate: false
    actions: actions
  }
}

// One chart or table per item; KQL over the same tables as the alerts.
var charts = [
  {
    title: 'Queue depth (visible, in flight, poison)'
    query: 'AppMetrics | where Name == "vmpool.queue.depth" | summarize depth = max(Max) by queue = tostring(Properties["queue"]), bin(TimeGenerated, 5m) | render timechart'
    visualization: 'timechart'
  }
  {
    title: 'VMs by state'
    query: 'AppMetrics | where Name == "vmpool.vms" | summarize vms = max(Max) by state = tostring(Properties["state"]), bin(TimeGenerated, 5m) | render areachart'
    visualization: 'areachart'
  }
  {
    title: 'VM starts and boot durations (s)'
    query: 'AppMetrics | where Name in ("vmpool.vm.starts", "vmpool.vm.boot.duration") | summarize starts = sumif(Sum, Name == "vmpool.vm.starts"), avgBootS = sumif(Sum, Name == "vmpool.vm.boot.duration") / sumif(ItemCount, Name == "vmpool.vm.boot.duration"), maxBootS = maxif(Max, Name == "vmpool.vm.boot.duration") by bin(TimeGenerated, 15m) | render timechart'
    visualization: 'timechart'
  }
  {
    title: 'Jobs by outcome and pipeline'
    query: 'AppMetrics | where Name == "vmpool.jobs" | summarize jobs = sum(Sum) by outcome = tostring(Properties["outcome"]), actions = tostring(Properties["actions"]), bin(TimeGenerated, 15m) | render columnchart'
    visualization: 'barchart'
  }
  {
    title: 'Step durations by action (s)'
    query: 'AppMetrics | where Name == "vmpool.step.duration" | summarize avgS = sum(Sum) / sum(ItemCount), maxS = max(Max) by action = tostring(Properties["action"]), outcome = tostring(Properties["outcome"]), bin(TimeGenerated, 15m) | render timechart'
    visualization: 'timechart'
  }
  {
    title: 'Billed VM hours per day'
    query: 'AppMetrics | where Name == "vmpool.vm.billed" | summarize hours = sum(Sum) / 3600.0 by vm = tostring(Properties["vm"]), bin(TimeGenerated, 1d) | render columnchart'
    visualization: 'barchart'
  }
  {
    title: 'Failed jobs (job, run, VM, attempt)'
    query: 'AppTraces | where Properties["event.kind"] in ("job.failed", "work.done") and SeverityLevel >= 2 | project TimeGenerated, job = tostring(Properties["job.id"]), run = tostring(Properties["run.id"]), vm = tostring(Properties["vm.name"]), attempt = tostring(Properties["job.attempt"]), Message | order by TimeGenerated desc | take 200'
    visualization: 'table'
  }
]

var chartItems = [for (chart, i) in charts: {
  type: 3
  content: {
    version: 'KqlItem/1.0'
    title: chart.title
    query: chart.query
    size: 0
    timeContext: { durationMs: 86400000 }
    queryType: 0
    resourceType: 'microsoft.operationalinsights/workspaces'
    crossComponentResources: [logAnalyticsId]
    visualization: chart.visualization
  }
  customWidth: '50'
  name: 'chart-${i}'
}]

var titleItem = {
  type: 1
  content: { json: '## VM pool\nQueue, pool, jobs and cost from the app\'s OpenTelemetry metrics (`vmpool.*`) and event records.' }
  name: 'title'
}

var workbookContent = {
  version: 'Notebook/1.0'
  items: concat([titleItem], chartItems)
  fallbackResourceIds: [logAnalyticsId]
}

resource workbook 'Microsoft.Insights/workbooks@2023-06-01' = {
  name: guid(resourceGroup().id, 'vmpool-workbook')
  location: location
  tags: tags
  kind: 'shared'
  properties: {
    displayName: workbookName
    category: 'workbook'
    sourceId: logAnalyticsId
    serializedData: string(workbookContent)
  }
}

output workbookId string = workbook.id
output alertRuleIds array = [poisonAlert.id, vmFailedAlert.id, jobFailureAlert.id, dailyCostAlert.id]
