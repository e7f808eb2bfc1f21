{{/* Names --------------------------------------------------------------------------------------------- */}}

{{- define "shoal.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: the release name, plus the chart name unless the release name contains it. */}}
{{- define "shoal.fullname" -}}
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

{{- define "shoal.scheduler.fullname" -}}
{{- printf "%s-scheduler" (include "shoal.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "shoal.seedPeer.fullname" -}}
{{- printf "%s-seed-peer" (include "shoal.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "shoal.daemon.fullname" -}}
{{- printf "%s-daemon" (include "shoal.fullname" .) | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "shoal.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shoal.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Cluster secret ----------------------------------------------------------------------------------- */}}

{{/* The Secret holding the cluster secret: cluster.existingSecret, else the one this chart generates. */}}
{{- define "shoal.clusterSecretName" -}}
{{- .Values.cluster.existingSecret | default (printf "%s-cluster" (include "shoal.fullname" .)) }}
{{- end }}

{{/* Where every Shoal container finds the cluster secret (--cluster-secret-file). */}}
{{- define "shoal.clusterSecretFile" -}}
/etc/shoal-cluster/secret
{{- end }}

{{/* The read-only volume with the cluster secret as the file "secret", whatever its key in the Secret. */}}
{{- define "shoal.clusterSecretVolume" -}}
- name: cluster-secret
  secret:
    secretName: {{ include "shoal.clusterSecretName" . }}
    {{- /* The kubelet adds group read for podSecurityContext.fsGroup, which the container user is in. */}}
    defaultMode: 256 # 0400
    items:
      - key: {{ ternary .Values.cluster.existingSecretKey "secret" (ne .Values.cluster.existingSecret "") }}
        path: secret
{{- end }}

{{- define "shoal.clusterSecretMount" -}}
- name: cluster-secret
  mountPath: {{ include "shoal.clusterSecretFile" . | dir }}
  readOnly: true
{{- end }}

{{/* Labels ------------------------------------------------------------------------------------------- */}}

{{- define "shoal.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "shoal.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector labels of one component; call with (dict "ctx" $ "component" "scheduler"). */}}
{{- define "shoal.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "shoal.componentLabels" -}}
{{ include "shoal.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Pod spec pieces ---------------------------------------------------------------------------------- */}}

{{- define "shoal.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Scheduler addresses for --scheduler, rendered from the replica count or the headless Service name. */}}
{{- define "shoal.schedulerAddresses" -}}
{{- if .Values.scheduler.externalAddresses }}
{{- join "," .Values.scheduler.externalAddresses }}
{{- else }}
{{- $svc := include "shoal.scheduler.fullname" . }}
{{- $suffix := printf "%s.%s.svc.%s:%d" $svc .Release.Namespace .Values.clusterDomain (int .Values.scheduler.port) }}
{{- if eq .Values.scheduler.addressMode "service" }}
{{- $suffix }}
{{- else if eq .Values.scheduler.addressMode "pods" }}
{{- if not (int .Values.scheduler.replicas) }}
{{- fail "scheduler.replicas is 0: the daemons need a scheduler (set scheduler.externalAddresses to use others)" }}
{{- end }}
{{- $addrs := list }}
{{- range $i := until (int .Values.scheduler.replicas) }}
{{- $addrs = append $addrs (printf "%s-%d.%s" $svc $i $suffix) }}
{{- end }}
{{- join "," $addrs }}
{{- else }}
{{- fail "scheduler.addressMode must be pods or service" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The daemon configuration of one role: config with seedPeer.config or daemon.config merged over it.
     Call with (dict "ctx" $ "role" "seedPeer"); returns YAML. */}}
{{- define "shoal.roleConfig" -}}
{{- $role := get .ctx.Values .role }}
{{- if hasKey (.ctx.Values.config.proxy | default dict) "allow_clients" }}
{{- fail "config.proxy.allow_clients is rendered by the chart: set daemon.proxy.allowClients instead" }}
{{- end }}
{{- $cfg := mergeOverwrite (deepCopy .ctx.Values.config) (deepCopy (default (dict) $role.config)) }}
{{- if eq .role "daemon" }}
{{- $proxy := $cfg.proxy | default dict }}
{{- if hasKey $proxy "allow_clients" }}
{{- fail "daemon.config.proxy.allow_clients is rendered by the chart: set daemon.proxy.allowClients instead" }}
{{- end }}
{{- /* Loopback always (the daemon's own default), then the networks the operator lets use the node's proxy. */}}
{{- $_ := set $proxy "allow_clients" (concat (list "127.0.0.0/8" "::1/128") ($role.proxy.allowClients | default list) | uniq) }}
{{- $_ := set $cfg "proxy" $proxy }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/* Arguments of `shoal daemon` for one role. Call with (dict "ctx" $ "role" "seedPeer"|"daemon").
     Besides the addresses, only workers and io_engine (which need a restart anyway) are passed as flags as
     well as in the config file: flags override the file when SIGHUP re-reads it, so the reloadable settings
     (proxy rules, upload.rate, storage quota and ttl) must come from the file alone. */}}
{{- define "shoal.daemonArgs" -}}
{{- $v := .ctx.Values }}
{{- $role := get $v .role }}
{{- $cfg := include "shoal.roleConfig" . | fromYaml }}
{{- $proxy := "" }}
{{- if eq .role "seedPeer" }}
{{- $proxy = printf "127.0.0.1:%d" (int $role.proxyPort) }}
{{- else }}
{{- /* $(NODE_IP) is expanded by the kubelet from the container's env (status.hostIP). */}}
{{- $listen := $role.proxy.listenAddress | default (ternary "$(NODE_IP)" "0.0.0.0" $role.hostNetwork) }}
{{- $proxy = printf "%s:%d" $listen (int $role.proxy.port) }}
{{- end }}
- daemon
{{- if $v.logJson }}
- --log-json
{{- end }}
- --config=/etc/shoal/config.yaml
- --data-dir=/var/lib/shoal
- --proxy-addr={{ $proxy }}
- --upload-addr=0.0.0.0:{{ int $role.uploadPort }}
- --metrics-addr=0.0.0.0:{{ int $v.metrics.port }}
- --scheduler={{ include "shoal.schedulerAddresses" .ctx }}
- --cluster-secret-file={{ include "shoal.clusterSecretFile" .ctx }}
{{- if eq .role "seedPeer" }}
- --seed
{{- end }}
- --io-engine={{ $cfg.storage.io_engine }}
{{- if $cfg.workers }}
- --workers={{ int $cfg.workers }}
{{- end }}
{{- range $role.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/* Environment of seed peer and daemon containers. Call with (dict "ctx" $ "role" ...). */}}
{{- define "shoal.daemonEnv" -}}
{{- $role := get .ctx.Values .role }}
{{- $cfg := include "shoal.roleConfig" . | fromYaml }}
- name: SHOAL_ADVERTISE_IP
  valueFrom:
    fieldRef:
      fieldPath: {{ (eq .role "daemon") | ternary $role.advertiseIPFrom "status.podIP" }}
- name: SHOAL_IO_ENGINE
  value: {{ $cfg.storage.io_engine | quote }}
{{- if eq .role "daemon" }}
- name: NODE_IP
  valueFrom:
    fieldRef:
      fieldPath: status.hostIP
{{- end }}
{{- with .ctx.Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Liveness and readiness probes of seed peers and daemons. Call with (dict "ctx" $ "port" "upload"). */}}
{{- define "shoal.daemonProbes" -}}
{{- $p := .ctx.Values.probes }}
{{- range $kind := list "liveness" "readiness" }}
{{ $kind }}Probe:
  {{- if eq $p.type "httpGet" }}
  httpGet:
    path: {{ ternary "/healthz" "/readyz" (eq $kind "liveness") }}
    port: metrics
  {{- else if eq $p.type "tcpSocket" }}
  tcpSocket:
    port: {{ $.port }}
  {{- else }}
  {{- fail "probes.type must be tcpSocket or httpGet" }}
  {{- end }}
  {{- toYaml (get $p $kind) | nindent 2 }}
{{- end }}
{{- end }}

{{/* Container security context of seed peers and daemons, with their seccomp profile. The profile is set on
     the container, not the pod: the runtime also applies a pod-level profile to the pod's sandbox, which
     would fail before an init container could install a Localhost profile. */}}
{{- define "shoal.daemonSecurityContext" -}}
{{- $sc := deepCopy .Values.securityContext }}
{{- $profile := dict "type" .Values.seccomp.type }}
{{- if eq .Values.seccomp.type "Localhost" }}
{{- $_ := set $profile "localhostProfile" .Values.seccomp.localhostProfile }}
{{- else if not (has .Values.seccomp.type (list "RuntimeDefault" "Unconfined")) }}
{{- fail "seccomp.type must be RuntimeDefault, Localhost or Unconfined" }}
{{- end }}
{{- $_ := set $sc "seccompProfile" $profile }}
{{- toYaml $sc }}
{{- end }}

{{/* Pod security context of every pod: RuntimeDefault seccomp unless a container says otherwise. */}}
{{- define "shoal.podSecurityContext" -}}
{{- $sc := deepCopy .Values.podSecurityContext }}
{{- $_ := set $sc "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- toYaml $sc }}
{{- end }}

{{/* Whether pods install the seccomp profile on their node themselves (seccomp.installProfile). */}}
{{- define "shoal.installSeccompProfile" -}}
{{- if and (eq .Values.seccomp.type "Localhost") .Values.seccomp.installProfile }}true{{ end }}
{{- end }}

{{/* Init container that copies the Localhost seccomp profile onto the node; runs under RuntimeDefault
     itself, since the profile it installs may not exist yet. */}}
{{- define "shoal.seccompInstaller" -}}
- name: install-seccomp-profile
  image: {{ include "shoal.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  command:
    - install
    - -D
    - -m
    - "0644"
    - /profile/shoal-iouring.json
    - {{ printf "/seccomp/%s" .Values.seccomp.localhostProfile | quote }}
  securityContext:
    runAsNonRoot: false
    runAsUser: 0
    allowPrivilegeEscalation: false
    readOnlyRootFilesystem: true
    capabilities:
      drop: ["ALL"]
    seccompProfile:
      type: RuntimeDefault
  resources:
    requests:
      cpu: 10m
      memory: 16Mi
    limits:
      memory: 64Mi
  volumeMounts:
    - name: seccomp-profile
      mountPath: /profile
      readOnly: true
    - name: kubelet-seccomp
      mountPath: /seccomp
{{- end }}

{{/* The volumes the profile installer needs. */}}
{{- define "shoal.seccompInstallerVolumes" -}}
- name: seccomp-profile
  configMap:
    name: {{ include "shoal.fullname" . }}-seccomp
- name: kubelet-seccomp
  hostPath:
    path: {{ .Values.seccomp.kubeletSeccompDir }}
    type: DirectoryOrCreate
{{- end }}

{{/* Pod template annotations of seed peers and daemons: the config checksum (rollOnConfigChange) and the
     role's podAnnotations. Call with (dict "ctx" $ "role" "seedPeer"|"daemon"). */}}
{{- define "shoal.daemonPodAnnotations" -}}
{{- $role := get .ctx.Values .role }}
{{- if .ctx.Values.rollOnConfigChange }}
checksum/config: {{ include "shoal.roleConfig" . | sha256sum }}
{{- end }}
{{- with $role.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}
