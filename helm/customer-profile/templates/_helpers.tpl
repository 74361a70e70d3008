{{/*
Names, labels and the rendered configuration of the customer-profile chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "customer-profile.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The base name of every resource: fullnameOverride, or "<release>-<chart>", or just the release
name when it already contains the chart name. 52 characters at most, so that the StatefulSet's
pod and PVC names (which append "-0" and "data-") stay within Kubernetes' limits.
*/}}
{{- define "customer-profile.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "customer-profile.headlessName" -}}
{{- printf "%s-headless" (include "customer-profile.fullname" .) -}}
{{- end -}}

{{- define "customer-profile.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the pod: never change them after the first install. */}}
{{- define "customer-profile.selectorLabels" -}}
app.kubernetes.io/name: {{ include "customer-profile.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "customer-profile.labels" -}}
helm.sh/chart: {{ include "customer-profile.chart" . }}
{{ include "customer-profile.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: server
app.kubernetes.io/part-of: customer-profile
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "customer-profile.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "customer-profile.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "customer-profile.image" -}}
{{- $repo := .Values.image.repository -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Fixed paths and ports inside the container. */}}
{{- define "customer-profile.configDir" -}}/etc/customer-profile{{- end -}}
{{- define "customer-profile.grpcPort" -}}50051{{- end -}}
{{- define "customer-profile.metricsPort" -}}9090{{- end -}}

{{/*
The checks that make rendering fail with a message instead of producing a pod that cannot
start. Included by the StatefulSet and the ConfigMap.
*/}}
{{- define "customer-profile.validate" -}}
{{- $v := .Values -}}
{{- if $v.auth.enabled -}}
{{- $_ := required "auth.existingSecret is required: the service refuses to listen on a non-loopback address without authentication. Create a Secret with the key auth.toml holding [[auth.principals]] (run `customer-profile token` for a token and its hash) and pass --set auth.existingSecret=<name>; or set auth.enabled=false and give the principals in config.auth.principals." $v.auth.existingSecret -}}
{{- else -}}
{{- $auth := default (dict) $v.config.auth -}}
{{- if not $auth.principals -}}
{{- fail "auth.enabled=false but config.auth.principals is empty: the service refuses to listen on a non-loopback address without authentication. Give principals in config.auth.principals, or set auth.enabled=true with auth.existingSecret." -}}
{{- end -}}
{{- end -}}
{{- range $key := list "listen" "data_dir" "health" "tls" "encryption" -}}
{{- if hasKey $v.config $key -}}
{{- fail (printf "config.%s is set by the chart; use the chart's own values (service.*, persistence.*, tls.*, encryption.*) instead" $key) -}}
{{- end -}}
{{- end -}}
{{- if and (hasKey $v.config "metrics") (kindIs "map" $v.config.metrics) -}}
{{- if hasKey $v.config.metrics "listen" -}}
{{- fail "config.metrics.listen is set by the chart (container port 9090); change service.metricsPort instead" -}}
{{- end -}}
{{- end -}}
{{- $grace := include "customer-profile.graceSeconds" . | int64 -}}
{{- if not (kindIs "invalid" $v.terminationGracePeriodSeconds) -}}
{{- if le (int64 $v.terminationGracePeriodSeconds) $grace -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be above the shutdown grace (%d s), or the kubelet kills the service while it drains; leave it null to get grace + 10" (int64 $v.terminationGracePeriodSeconds) $grace) -}}
{{- end -}}
{{- end -}}
{{- if and $v.tls.existingSecret (has (int64 $v.tls.healthPort) (list 50051 9090)) -}}
{{- fail "tls.healthPort must differ from the gRPC (50051) and metrics (9090) ports" -}}
{{- end -}}
{{- end -}}

{{/*
The service's configuration as a dict (returned as JSON): the typed values, then `config`
deep-merged over them, then the keys the chart owns.
*/}}
{{- define "customer-profile.configDict" -}}
{{- $v := .Values -}}
{{- $caps := list -}}
{{- range $v.contact.caps -}}
{{- $caps = append $caps (dict "window_hours" .windowHours "max" .max) -}}
{{- end -}}
{{- $cfg := dict
  "log" (dict "format" $v.log.format "filter" $v.log.filter)
  "shutdown" (dict "grace_secs" $v.shutdown.graceSeconds)
  "storage" (dict "cache_capacity_mb" $v.storage.cacheCapacityMb "min_free_mb" $v.storage.minFreeMb)
  "changes" (dict "retention_secs" $v.changes.retentionSeconds)
  "idempotency" (dict "retention_secs" $v.idempotency.retentionSeconds)
  "audit" (dict "rotate_mb" $v.audit.rotateMb "keep_files" $v.audit.keepFiles)
  "consent" (dict "default_grant_months" $v.consent.defaultGrantMonths "max_grant_months" $v.consent.maxGrantMonths)
  "contact" (dict "dedup_window_days" $v.contact.dedupWindowDays "caps" $caps "marketing_types" $v.contact.marketingTypes)
  "summary" (dict
    "moment_types" $v.summary.momentTypes
    "purchase_types" $v.summary.purchaseTypes
    "engagement_half_life_days" $v.summary.engagementHalfLifeDays
    "contact_pressure_half_life_days" $v.summary.contactPressureHalfLifeDays)
-}}
{{- $cfg = mergeOverwrite $cfg (deepCopy $v.config) -}}
{{- $dir := include "customer-profile.configDir" . -}}
{{- $_ := set $cfg "listen" (printf "0.0.0.0:%s" (include "customer-profile.grpcPort" .)) -}}
{{- $_ = set $cfg "data_dir" "/data" -}}
{{- $metrics := default (dict) $cfg.metrics -}}
{{- $_ = set $metrics "listen" (printf "0.0.0.0:%s" (include "customer-profile.metricsPort" .)) -}}
{{- $_ = set $cfg "metrics" $metrics -}}
{{- if $v.tls.existingSecret -}}
{{- $tls := dict "cert_file" (printf "%s/tls/tls.crt" $dir) "key_file" (printf "%s/tls/tls.key" $dir) -}}
{{- if $v.tls.clientCa -}}
{{- $_ = set $tls "client_ca_file" (printf "%s/tls/ca.crt" $dir) -}}
{{- end -}}
{{- $_ = set $cfg "tls" $tls -}}
{{- $_ = set $cfg "health" (dict "listen" (printf "0.0.0.0:%d" (int64 $v.tls.healthPort))) -}}
{{- end -}}
{{- if $v.encryption.existingSecret -}}
{{- $_ = set $cfg "encryption" (dict "master_key_file" (printf "%s/encryption/%s" $dir $v.encryption.secretKey)) -}}
{{- end -}}
{{- toJson $cfg -}}
{{- end -}}

{{/* The drain grace in force (after `config` is merged), in seconds. */}}
{{- define "customer-profile.graceSeconds" -}}
{{- $cfg := include "customer-profile.configDict" . | fromJson -}}
{{- $cfg.shutdown.grace_secs | int64 -}}
{{- end -}}

{{- define "customer-profile.terminationGracePeriodSeconds" -}}
{{- if kindIs "invalid" .Values.terminationGracePeriodSeconds -}}
{{- add (include "customer-profile.graceSeconds" . | int64) 10 -}}
{{- else -}}
{{- .Values.terminationGracePeriodSeconds | int64 -}}
{{- end -}}
{{- end -}}

{{/*
A small TOML writer, because Helm's toToml writes every number as a float (20.0), which the
service's integer settings refuse. Numbers without a fractional part are written as integers;
maps inside lists become inline tables; null values are left out.
*/}}
{{- define "customer-profile.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}{{ . }}{{- else -}}{{ toJson . }}{{- end -}}
{{- end -}}

{{- define "customer-profile.toml.value" -}}
{{- $k := kindOf . -}}
{{- if eq $k "string" -}}
{{- toJson . -}}
{{- else if eq $k "bool" -}}
{{- . -}}
{{- else if has $k (list "int" "int8" "int16" "int32" "int64" "uint" "uint8" "uint16" "uint32" "uint64") -}}
{{- printf "%d" . -}}
{{- else if has $k (list "float32" "float64") -}}
{{- if eq (float64 (int64 .)) (float64 .) -}}{{ printf "%d" (int64 .) }}{{- else -}}{{ . }}{{- end -}}
{{- else if eq $k "slice" -}}
[{{- range $i, $e := . -}}{{ if $i }}, {{ end }}{{ include "customer-profile.toml.value" $e }}{{- end -}}]
{{- else if eq $k "map" -}}
{{- $m := . -}}
{ {{- $first := true -}}
{{- range $key := keys $m | sortAlpha -}}
{{- $e := get $m $key -}}
{{- if not (kindIs "invalid" $e) -}}
{{- if not $first -}}, {{ end -}}{{- $first = false -}}
{{ include "customer-profile.toml.key" $key }} = {{ include "customer-profile.toml.value" $e }}
{{- end -}}
{{- end -}} }
{{- else -}}
{{- fail (printf "config: cannot write a %s as TOML" $k) -}}
{{- end -}}
{{- end -}}

{{/* A table: its plain keys first, then its sub-tables as [a.b] sections. */}}
{{- define "customer-profile.toml.table" -}}
{{- $t := .table -}}
{{- $prefix := .prefix -}}
{{- range $key := keys $t | sortAlpha -}}
{{- $e := get $t $key -}}
{{- if not (or (kindIs "map" $e) (kindIs "invalid" $e)) }}
{{ include "customer-profile.toml.key" $key }} = {{ include "customer-profile.toml.value" $e }}
{{- end -}}
{{- end -}}
{{- range $key := keys $t | sortAlpha -}}
{{- $e := get $t $key -}}
{{- if kindIs "map" $e -}}
{{- $path := include "customer-profile.toml.key" $key -}}
{{- if $prefix -}}{{- $path = printf "%s.%s" $prefix $path -}}{{- end }}

[{{ $path }}]
{{- include "customer-profile.toml.table" (dict "table" $e "prefix" $path) -}}
{{- end -}}
{{- end -}}
{{- end -}}
