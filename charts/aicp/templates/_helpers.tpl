{{/* ---------- Names and labels ---------- */}}

{{- define "aicp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aicp.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aicp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object; pass a dict {ctx, component}. */}}
{{- define "aicp.labels" -}}
helm.sh/chart: {{ include "aicp.chart" .ctx }}
{{ include "aicp.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: aicp
{{- end }}

{{/* Selector labels; pass a dict {ctx, component}. */}}
{{- define "aicp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "aicp.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "aicp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "aicp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The coordinator's Deployment (or StatefulSet) and its Service. */}}
{{- define "aicp.coordinator.fullname" -}}
{{- printf "%s-coordinator" (include "aicp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The coordinator's API as the release's pods reach it: its Service, by name (same namespace). */}}
{{- define "aicp.coordinator.url" -}}
{{- printf "http://%s:%v" (include "aicp.coordinator.fullname" .) .Values.coordinator.service.port }}
{{- end }}

{{/* ---------- API tokens ---------- */}}

{{/* The Secret holding the admin-token and worker-token keys: auth.existingSecret, else the
     one the chart creates (templates/auth-secret.yaml). */}}
{{- define "aicp.authSecretName" -}}
{{- if .Values.auth.existingSecret }}
{{- .Values.auth.existingSecret }}
{{- else }}
{{- printf "%s-auth" (include "aicp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* An env entry read from the auth Secret; pass a dict {ctx, env, key}. */}}
{{- define "aicp.authEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ include "aicp.authSecretName" .ctx }}
      key: {{ .key }}
{{- end }}

{{/* AICP_CLIENT_IP_HEADER: coordinator.clientIpHeader when set ("" = none: the peer address
     is the client). Unset (null): X-Forwarded-For when the chart's Ingress is the only way
     in from outside the cluster (enabled, Service ClusterIP): every outside request then
     comes from the ingress controller, and all clients would share its address's per-IP
     budget. None otherwise: a client reaching the coordinator without the proxy could write
     any address in that header and escape the per-IP limit. */}}
{{- define "aicp.clientIpHeader" -}}
{{- $c := .Values.coordinator }}
{{- if not (kindIs "invalid" $c.clientIpHeader) }}
{{- $c.clientIpHeader }}
{{- else if and $c.ingress.enabled (eq $c.service.type "ClusterIP") }}
{{- "X-Forwarded-For" }}
{{- end }}
{{- end }}

{{/* An AICP image; pass a dict {ctx, image}. */}}
{{- define "aicp.image" -}}
{{- $registry := .ctx.Values.images.registry -}}
{{- $repo := .image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" $registry) $repo }}{{ end -}}
{{- printf "%s:%s" $repo (default .ctx.Chart.AppVersion .image.tag) }}
{{- end }}

{{/* ---------- Streams, subjects and consumers: the only place they are spelled ----------
     They mirror events/src/subject.rs (Namespace) and events/src/consumers.rs. */}}

{{/* "P_" for prefix P, "" without. */}}
{{- define "aicp.streamPrefix" -}}
{{- if .Values.prefix }}{{ printf "%s_" .Values.prefix }}{{ end }}
{{- end }}

{{/* "P." for prefix P, "" without. */}}
{{- define "aicp.subjectPrefix" -}}
{{- if .Values.prefix }}{{ printf "%s." .Values.prefix }}{{ end }}
{{- end }}

{{/* The events stream: AICP_EVENTS or P_AICP_EVENTS. */}}
{{- define "aicp.eventsStream" -}}
{{ include "aicp.streamPrefix" . }}AICP_EVENTS
{{- end }}

{{/* The work-queue stream: AICP_WORK or P_AICP_WORK. */}}
{{- define "aicp.workStream" -}}
{{ include "aicp.streamPrefix" . }}AICP_WORK
{{- end }}

{{/* Subjects of the events stream: aicp.evt.> or P.aicp.evt.> */}}
{{- define "aicp.eventsSubjects" -}}
{{ include "aicp.subjectPrefix" . }}aicp.evt.>
{{- end }}

{{/* Subjects of the work stream: aicp.work.> or P.aicp.work.> */}}
{{- define "aicp.workSubjects" -}}
{{ include "aicp.subjectPrefix" . }}aicp.work.>
{{- end }}

{{/* One agent's work subject; pass a dict {ctx, agent}. */}}
{{- define "aicp.workSubject" -}}
{{ include "aicp.subjectPrefix" .ctx }}aicp.work.{{ .agent }}
{{- end }}

{{/* One agent's durable consumer on the work stream (not prefixed: it lives in the
     prefixed stream); pass the agent id. */}}
{{- define "aicp.workerConsumer" -}}
worker-{{ . }}
{{- end }}

{{/* The coordinator's durable consumers on the events stream, comma-separated. */}}
{{- define "aicp.coordinatorConsumers" -}}
aicp-process
{{- end }}

{{/* Stream replicas: streams.replicas, else 3 on a clustered bundled NATS, else 1. */}}
{{- define "aicp.streamReplicas" -}}
{{- if not (kindIs "invalid" .Values.streams.replicas) }}
{{- if and .Values.nats.enabled (gt (int .Values.streams.replicas) (int (include "aicp.nats.replicas" .))) }}
{{- fail (printf "streams.replicas %v is more than the %v bundled NATS server(s): enable nats.cluster or lower it" .Values.streams.replicas (include "aicp.nats.replicas" .)) }}
{{- end }}
{{- .Values.streams.replicas }}
{{- else if and .Values.nats.enabled .Values.nats.cluster.enabled }}
{{- 3 }}
{{- else }}
{{- 1 }}
{{- end }}
{{- end }}

{{/* ---------- NATS ---------- */}}

{{- define "aicp.nats.fullname" -}}
{{- printf "%s-nats" (include "aicp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aicp.nats.headless" -}}
{{- printf "%s-nats-headless" (include "aicp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "aicp.nats.replicas" -}}
{{- if .Values.nats.cluster.enabled }}{{ .Values.nats.cluster.replicas }}{{ else }}1{{ end }}
{{- end }}

{{/* The route URL of server i of the cluster; pass a dict {ctx, i, credentials ("" or
     "user:password@")}. */}}
{{- define "aicp.nats.route" -}}
{{- printf "nats://%s%s-%d.%s.%s.svc.%s:6222" (.credentials | default "") (include "aicp.nats.fullname" .ctx) .i (include "aicp.nats.headless" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain }}
{{- end }}

{{/* The URL the AICP binaries connect to (credentials are added by aicp.natsEnv). */}}
{{- define "aicp.nats.url" -}}
{{- if .Values.nats.enabled }}
{{- printf "nats://%s.%s.svc.%s:4222" (include "aicp.nats.fullname" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- required "nats.external.url is required when nats.enabled is false" .Values.nats.external.url }}
{{- end }}
{{- end }}

{{/* host:port of the NATS monitoring endpoint KEDA's nats-jetstream scaler reads. The
     headless Service: in a cluster the scaler finds the consumer's leader by server name
     (<pod>.<headless service>), and server_name is the pod name. */}}
{{- define "aicp.nats.monitoringEndpoint" -}}
{{- if .Values.nats.enabled }}
{{- printf "%s.%s.svc.%s:8222" (include "aicp.nats.headless" .) .Release.Namespace .Values.clusterDomain }}
{{- else }}
{{- required "nats.external.monitoringEndpoint (host:port of the NATS HTTP monitoring) is required for KEDA with an external NATS" .Values.nats.external.monitoringEndpoint }}
{{- end }}
{{- end }}

{{/* Whether the bundled NATS requires users (nats.enabled and nats.auth.enabled): "true" or "". */}}
{{- define "aicp.nats.auth" -}}
{{- if and .Values.nats.enabled .Values.nats.auth.enabled }}true{{ end }}
{{- end }}

{{/* The keys of the auth Secret holding the bundled NATS's passwords. */}}
{{- define "aicp.nats.authKeys" -}}
nats-coordinator-password,nats-worker-password,nats-route-password
{{- end }}

{{/* The user the provisioning Job logs in to the bundled NATS with: "coordinator", or "" for
     none. The Job is also a pre-upgrade hook: it then runs against the NATS of the previous
     revision, before this revision's Secret is applied, and may only name a password key the
     live Secret already holds. On an upgrade it logs in when that Secret (read with lookup)
     holds nats-coordinator-password: the NATS it meets was started with it if users were
     required, and a NATS without users accepts any login. A release upgraded to users for
     the first time thus provisions without a login (its NATS has no users yet). Otherwise
     (an install, helm template) it logs in when nats.auth.enabled. */}}
{{- define "aicp.nats.jobUser" -}}
{{- if .Values.nats.enabled }}
{{- if .Release.IsUpgrade }}
{{- $live := (lookup "v1" "Secret" .Release.Namespace (include "aicp.authSecretName" .)).data | default dict }}
{{- if hasKey $live "nats-coordinator-password" }}coordinator{{ end }}
{{- else if .Values.nats.auth.enabled }}coordinator{{ end }}
{{- end }}
{{- end }}

{{/* The worker permissions of the bundled NATS (files/worker-permissions.conf, a copy of
     ops/nats/worker-permissions.conf's AICP_WORKER_PERMISSIONS), for the release's prefix. */}}
{{- define "aicp.nats.workerPermissions" -}}
{{- $permissions := .Files.Get "files/worker-permissions.conf" }}
{{- if not (contains "AICP_WORKER_PERMISSIONS = {" $permissions) }}
{{- fail "files/worker-permissions.conf is missing from the chart or defines no AICP_WORKER_PERMISSIONS" }}
{{- end }}
{{- regexFind "(?s)AICP_WORKER_PERMISSIONS = \\{.*" $permissions
  | replace ".AICP_" (printf ".%sAICP_" (include "aicp.streamPrefix" .))
  | replace "\"aicp." (printf "\"%saicp." (include "aicp.subjectPrefix" .)) }}
{{- end }}

{{/* Env entries connecting an AICP binary to NATS: credentials, the URL (with $(VAR)
     composition of the credentials), the prefix. Pass a dict {ctx, user, hook}: user is
     the bundled NATS's user the binary logs in as when it requires users, "coordinator"
     (everything) or "worker" (no event writes), with its password from the auth Secret;
     hook: log in as user even if this revision has no users (aicp.nats.jobUser decided).
     An external NATS gets nats.external.auth whatever the user. */}}
{{- define "aicp.natsEnv" -}}
{{- $ctx := .ctx }}
{{- $url := include "aicp.nats.url" $ctx }}
{{- $auth := $ctx.Values.nats.external.auth }}
{{- $external := not $ctx.Values.nats.enabled }}
{{- $userPass := and $external $auth.existingSecret $auth.userKey $auth.passwordKey }}
{{- $token := and $external $auth.existingSecret $auth.tokenKey }}
{{- if and (not $external) .user (or .hook (include "aicp.nats.auth" $ctx)) }}
{{- if not (has .user (list "coordinator" "worker")) }}
{{- fail (printf "aicp.natsEnv: unknown NATS user %q" .user) }}
{{- end }}
# The bundled NATS's user {{ .user }}.
- name: NATS_USER
  value: {{ .user | quote }}
{{ include "aicp.authEnv" (dict "ctx" $ctx "env" "NATS_PASSWORD" "key" (printf "nats-%s-password" .user)) }}
{{- end }}
{{- if $userPass }}
- name: NATS_USER
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.userKey }}
- name: NATS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.passwordKey }}
{{- end }}
{{- if $token }}
- name: NATS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $auth.existingSecret }}
      key: {{ $auth.tokenKey }}
{{- end }}
{{- if and $external $auth.existingSecret $auth.credsKey }}
- name: NATS_CREDS
  value: /etc/aicp/nats-auth/{{ $auth.credsKey }}
{{- end }}
{{- if and $external $ctx.Values.nats.external.tls.caSecret }}
# Trusted for the NATS connection, which then requires TLS.
- name: NATS_TLS_CA
  value: /etc/aicp/nats-ca/{{ $ctx.Values.nats.external.tls.caKey }}
{{- end }}
{{- if and $auth.composeUrl (or $userPass $token) }}
{{- $parts := splitn "://" 2 $url }}
- name: NATS_URL
  value: {{ printf "%s://%s@%s" $parts._0 (ternary "$(NATS_USER):$(NATS_PASSWORD)" "$(NATS_TOKEN)" (not (not $userPass))) $parts._1 | quote }}
{{- else }}
- name: NATS_URL
  value: {{ $url | quote }}
{{- end }}
- name: AICP_PREFIX
  value: {{ $ctx.Values.prefix | quote }}
{{- end }}

{{/* Volumes for the NATS credentials file and CA, when configured. */}}
{{- define "aicp.natsVolumes" -}}
{{- if not .Values.nats.enabled }}
{{- if and .Values.nats.external.auth.existingSecret .Values.nats.external.auth.credsKey }}
- name: nats-auth
  secret:
    secretName: {{ .Values.nats.external.auth.existingSecret }}
    items:
      - key: {{ .Values.nats.external.auth.credsKey }}
        path: {{ .Values.nats.external.auth.credsKey }}
{{- end }}
{{- if .Values.nats.external.tls.caSecret }}
- name: nats-ca
  secret:
    secretName: {{ .Values.nats.external.tls.caSecret }}
    items:
      - key: {{ .Values.nats.external.tls.caKey }}
        path: {{ .Values.nats.external.tls.caKey }}
{{- end }}
{{- end }}
{{- end }}

{{- define "aicp.natsVolumeMounts" -}}
{{- if not .Values.nats.enabled }}
{{- if and .Values.nats.external.auth.existingSecret .Values.nats.external.auth.credsKey }}
- name: nats-auth
  mountPath: /etc/aicp/nats-auth
  readOnly: true
{{- end }}
{{- if .Values.nats.external.tls.caSecret }}
- name: nats-ca
  mountPath: /etc/aicp/nats-ca
  readOnly: true
{{- end }}
{{- end }}
{{- end }}

{{/* ---------- Workers ---------- */}}

{{/* The worker pools, each merged over the workers' defaults, as a YAML list:
     [{name, agents (["all"] for the all pool), scaleAgents, <settings>}]. */}}
{{- define "aicp.workerPools" -}}
{{- $defaults := omit .Values.workers "all" "pools" }}
{{- $pools := list }}
{{- if .Values.workers.all.enabled }}
{{- $pool := deepCopy $defaults }}
{{- $_ := set $pool "name" "all" }}
{{- $_ := set $pool "agents" (list "all") }}
{{- $_ := set $pool "scaleAgents" .Values.workers.all.scaleAgents }}
{{- $pools = append $pools $pool }}
{{- end }}
{{- range .Values.workers.pools }}
{{- $pool := mergeOverwrite (deepCopy $defaults) (deepCopy .) }}
{{- $_ := set $pool "scaleAgents" .agents }}
{{- $pools = append $pools $pool }}
{{- end }}
{{- toYaml (dict "pools" $pools) }}
{{- end }}

{{/* Agents whose worker consumers the provisioning Job creates: every pool's scaleAgents and
     streams.extraAgents, sorted, without repeats. */}}
{{- define "aicp.provisionedAgents" -}}
{{- $agents := .Values.streams.extraAgents }}
{{- range (include "aicp.workerPools" . | fromYaml).pools }}
{{- $agents = concat $agents .scaleAgents }}
{{- end }}
{{- $agents | uniq | sortAlpha | join "," }}
{{- end }}
