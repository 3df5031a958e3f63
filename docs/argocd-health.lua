-- Argo CD health check for kontinual.io/ContinualModel (Lua 5.1, as Argo CD runs it).
-- Install: put this script under the key
--   resource.customizations.health.kontinual.io_ContinualModel
-- of the argocd-cm ConfigMap (see the README section "GitOps").
--
-- Healthy:     the operator has seen the current spec (status.observedGeneration equals
--              metadata.generation) and Ready is True.
-- Suspended:   spec.serving.replicas is 0 (Ready=False, reason ScaledToZero).
-- Degraded:    Degraded is True (a training run, gate or rollout failed; the old model keeps
--              serving), or Ready is False for a reason that does not fix itself: an invalid
--              spec, children the API server refused, or a server rollout past its deadline.
-- Progressing: anything else (no status yet, spec not yet observed, server rolling out).
local hs = {status = "Progressing", message = "Waiting for the Kontinual operator to report status"}

-- Ready=False reasons that need a person; every other Ready=False reason is a rollout in progress.
local stuck = {InvalidSpec = true, ApplyFailed = true, ProgressDeadlineExceeded = true}

if obj.status == nil or obj.status.conditions == nil then
  return hs
end
local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= generation then
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
  return hs
end

local ready, degraded = nil, nil
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Ready" then
    ready = condition
  elseif condition.type == "Degraded" then
    degraded = condition
  end
end

local function describe(condition)
  local text = condition.reason or ""
  if condition.message ~= nil and condition.message ~= "" then
    text = text .. ": " .. condition.message
  end
  return text
end

if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(degraded)
elseif ready == nil then
  hs.message = "Waiting for the Ready condition"
elseif ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready)
elseif ready.reason == "ScaledToZero" then
  hs.status = "Suspended"
  hs.message = describe(ready)
elseif stuck[ready.reason] then
  hs.status = "Degraded"
  hs.message = describe(ready)
else
  hs.message = describe(ready)
end
return hs
