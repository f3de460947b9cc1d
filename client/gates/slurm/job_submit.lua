--[[
Preflight submit gate for Slurm (JobSubmitPlugins=lua; Slurm loads
job_submit.lua from the directory of slurm.conf).

A job is tagged with a Preflight job id or request digest by
  sbatch --comment=preflight:<job-id-or-digest> ...
or, for batch jobs, PREFLIGHT_DIGEST=<digest> in its environment
(sbatch --export=ALL,PREFLIGHT_DIGEST=...). The gate asks the service
through `preflight verdict` with a short timeout and
  admits PASS/WARN,
  rejects FAIL/ERROR, showing the verdict's top findings to the submitter,
  applies on_missing (no stored verdict) and on_unavailable (service down),
  lets untagged jobs through unless require_tag is set.

Settings: preflight_gate.conf next to this file, key = value lines:
  server = SERVERS            (required: HOST:PORT, a list H1:P1,H2:P2 of
                              fleet replicas, or dns:///NAME:PORT; lookups are
                              spread round-robin, a dead replica is skipped)
  cli = /usr/bin/preflight-thin  (the LibTorch-free preflight CLI)
  timeout = 5                 (seconds for one verdict lookup)
  on_missing = reject|admit   (default reject)
  on_unavailable = reject|admit (default admit: a Preflight outage must not stop the cluster)
  require_tag = no|yes        (default no)
The file is read on every submission, so policy changes need no restart.
--]]

local function script_dir()
   local src = debug.getinfo(1, "S").source
   return (src:sub(1, 1) == "@" and src:sub(2):match("(.*/)")) or "./"
end

local function read_conf()
   local conf = {cli = "/usr/bin/preflight-thin", timeout = "5", on_missing = "reject",
                 on_unavailable = "admit", require_tag = "no"}
   local f = io.open(script_dir() .. "preflight_gate.conf", "r")
   if f then
      for line in f:lines() do
         local k, v = line:match("^%s*([%w_]+)%s*=%s*(.-)%s*$")
         if k and not line:match("^%s*#") then conf[k] = v end
      end
      f:close()
   end
   return conf
end

local function shell_quote(s)
   return "'" .. s:gsub("'", "'\\''") .. "'"
end

local function find_tag(job_desc)
   local comment = job_desc.comment
   if comment ~= nil then
      local tag = comment:match("preflight:([%w%._:/%-]+)")
      if tag then return tag end
   end
   local env = job_desc.environment
   if env ~= nil then
      for _, kv in pairs(env) do
         local v = tostring(kv):match("^PREFLIGHT_DIGEST=(.+)$")
         if v then return v end
      end
      if type(env) == "table" and env.PREFLIGHT_DIGEST then return env.PREFLIGHT_DIGEST end
   end
   return nil
end

local function decide(policy, message)
   if policy == "admit" then
      slurm.log_user("preflight: " .. message .. "; admitted by policy")
      return slurm.SUCCESS
   end
   slurm.log_user("preflight: " .. message .. "; rejected by policy")
   return slurm.ERROR
end

function slurm_job_submit(job_desc, part_list, submit_uid)
   local conf = read_conf()
   local tag = find_tag(job_desc)
   if tag == nil then
      if conf.require_tag == "yes" then
         slurm.log_user("preflight: this cluster requires a Preflight verdict; submit with " ..
                        "--comment=preflight:<job-id-or-digest>")
         return slurm.ERROR
      end
      return slurm.SUCCESS
   end
   if conf.server == nil or conf.server == "" then
      return decide(conf.on_unavailable, "no Preflight server configured")
   end
   local key = (#tag == 64 and tag:match("^[0-9a-f]+$")) and "--digest" or "--job-id"
   -- The exit status travels in the output: io.popen():close() does not
   -- return it in every Lua that Slurm links (5.1 returns only true).
   local cmd = string.format("%s verdict --server %s %s %s --timeout %s 2>&1; echo \"__exit=$?\"",
                             shell_quote(conf.cli), shell_quote(conf.server), key,
                             shell_quote(tag), shell_quote(conf.timeout))
   local pipe = io.popen(cmd)
   local raw = pipe:read("*a") or ""
   pipe:close()
   local out, status = raw:match("^(.-)__exit=(%d+)%s*$")
   out = out or raw
   local code = tonumber(status or "")
   if code == 0 then
      slurm.log_info("preflight: %s admitted", tag)
      return slurm.SUCCESS
   elseif code == 1 or code == 3 then
      slurm.log_user("preflight: job refused, its verdict is not fit to run:\n" .. out)
      return slurm.ERROR
   elseif code == 4 then
      return decide(conf.on_missing, "no Preflight verdict stored for " .. tag)
   end
   return decide(conf.on_unavailable, "the Preflight service did not answer (" ..
                 out:gsub("%s+$", "") .. ")")
end

function slurm_job_modify(job_desc, job_rec, part_list, modify_uid)
   return slurm.SUCCESS
end

slurm.log_info("preflight job_submit gate loaded")
return slurm.SUCCESS
