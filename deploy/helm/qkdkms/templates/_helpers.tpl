{{- define "qkdkms.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "qkdkms.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "qkdkms.selectorLabels" -}}
app.kubernetes.io/name: {{ include "qkdkms.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "qkdkms.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "qkdkms.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
qkdkms/kme: {{ .Values.kmeId | quote }}
{{- end -}}

{{/* The headless Service: Raft and peer discovery, one DNS name per pod. */}}
{{- define "qkdkms.peersService" -}}
{{- printf "%s-peers" (include "qkdkms.fullname" .) -}}
{{- end -}}

{{- define "qkdkms.etsiService" -}}
{{- printf "%s-etsi" (include "qkdkms.fullname" .) -}}
{{- end -}}

{{- define "qkdkms.peersDomain" -}}
{{- printf "%s.%s.svc.%s" (include "qkdkms.peersService" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/* The advertised address of node $i: dict "root" . "i" N */}}
{{- define "qkdkms.advertise" -}}
{{- $root := .root -}}
{{- printf "%s-%d.%s:%d" (include "qkdkms.fullname" $root) (int .i) (include "qkdkms.peersDomain" $root) (int $root.Values.port) -}}
{{- end -}}

{{- define "qkdkms.checkValues" -}}
{{- if lt (int .Values.replicas) 1 -}}{{- fail "replicas must be at least 1" -}}{{- end -}}
{{- if hasKey .Values "bootstrapReplicas" -}}{{- fail "bootstrapReplicas is gone: the nodes bootstrap and join themselves (discovery; README.md, Bootstrap and scaling)" -}}{{- end -}}
{{- if not (regexMatch "^[^/\\\\: \t]{1,128}$" .Values.kmeId) -}}{{- fail "kmeId: 1-128 characters, no '/', '\\', ':' or whitespace" -}}{{- end -}}
{{- if hasKey .Values.peers .Values.kmeId -}}{{- fail "peers must not name this site's own kmeId" -}}{{- end -}}
{{- if and .Values.link.enabled (not .Values.peers) -}}{{- fail "link.enabled needs at least one site in peers" -}}{{- end -}}
{{- if not (has .Values.antiAffinity (list "hard" "soft")) -}}{{- fail "antiAffinity must be hard or soft" -}}{{- end -}}
{{- end -}}

{{/* The JSON config node $i reads (node/config.go, node/CONFIG.md): dict "root" . "i" N */}}
{{- define "qkdkms.nodeConfig" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
{{- $full := include "qkdkms.fullname" $root -}}
{{- $cfg := dict
  "node_id" (printf "%s-%d" $full (int .i))
  "kme_id" $v.kmeId
  "listen" (printf "0.0.0.0:%d" (int $v.port))
  "advertise" (include "qkdkms.advertise" (dict "root" $root "i" .i))
  "data_dir" "/var/lib/qkdkms/raft"
  "tls" (dict "ca" "/etc/qkdkms/tls/ca.crt" "cert" "/etc/qkdkms/tls/tls.crt" "key" "/etc/qkdkms/tls/tls.key")
  "kek_file" "/etc/qkdkms/kek/kek"
-}}
{{- /* No static bootstrap map: ordinal 0 founds the site, the others join
       through the SRV records of the headless Service's port "https". */ -}}
{{- $disc := dict "mode" "dns" "srv" (printf "_https._tcp.%s" (include "qkdkms.peersDomain" $root)) -}}
{{- if $v.discovery.leaveOnScaleDown -}}{{- $_ := set $disc "statefulset" $full -}}{{- end -}}
{{- $_ := set $cfg "discovery" $disc -}}
{{- if $v.peers -}}{{- $_ := set $cfg "peers" $v.peers -}}{{- end -}}
{{- if $v.raft -}}{{- $_ := set $cfg "raft" $v.raft -}}{{- end -}}
{{- if $v.log -}}{{- $_ := set $cfg "log" $v.log -}}{{- end -}}
{{- if $v.link.enabled -}}
{{- $link := dict "psk_file" "/etc/qkdkms/link/psk" "fiber_km" $v.link.fiberKm "eve" $v.link.eve -}}
{{- if $v.link.native -}}{{- $_ := set $link "native" true -}}{{- else -}}{{- $_ := set $link "plugin_dir" $v.link.pluginDir -}}{{- end -}}
{{- if $v.link.blockBits -}}{{- $_ := set $link "block_bits" (int $v.link.blockBits) -}}{{- end -}}
{{- $_ := set $cfg "link" $link -}}
{{- if $v.link.drivers -}}{{- $_ := set $cfg "links" $v.link.drivers -}}{{- end -}}
{{- end -}}
{{- /* /metrics serves only this site's nodes, its operators and the scrape
       identities (node/CONFIG.md): Prometheus's client certificate carries
       metrics:<kmeId>. */ -}}
{{- if or $v.serviceMonitor.enabled $v.tls.certManager.metricsClient.enabled -}}
{{- $_ := set $cfg "metrics" (dict "scrape_identities" (list (printf "metrics:%s" $v.kmeId))) -}}
{{- end -}}
{{- toPrettyJson $cfg -}}
{{- end -}}
