{{/*
Names and labels.
*/}}
{{- define "eni-net.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eni-net.fullname" -}}
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

{{- define "eni-net.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "eni-net.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eni-net.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "eni-net.labels" -}}
helm.sh/chart: {{ include "eni-net.chart" . }}
{{ include "eni-net.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eni-net
{{- end }}

{{- define "eni-net.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "eni-net.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "eni-net.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The credentials source after defaults: ramRole on aliyun, instanceProfile on aws.
*/}}
{{- define "eni-net.credentialsSource" -}}
{{- $src := .Values.credentials.source | default "" }}
{{- if eq $src "" }}
{{- if eq .Values.config.cloud.provider "aws" }}instanceProfile{{ else }}ramRole{{ end }}
{{- else }}
{{- $src }}
{{- end }}
{{- end }}

{{/* Whether the manager takes access keys from a Secret. */}}
{{- define "eni-net.usesSecret" -}}
{{- $src := include "eni-net.credentialsSource" . }}
{{- if or (eq $src "existingSecret") (eq $src "values") }}true{{ end }}
{{- end }}

{{- define "eni-net.secretName" -}}
{{- if eq (include "eni-net.credentialsSource" .) "existingSecret" }}
{{- .Values.credentials.existingSecret.name }}
{{- else }}
{{- printf "%s-credentials" (include "eni-net.fullname" .) }}
{{- end }}
{{- end }}

{{/*
Every problem with the values, reported at once (like the manager does with its
configuration), then `fail`. Included by every template, so no object renders from
values that cannot work.
*/}}
{{- define "eni-net.validate" -}}
{{- $p := list }}
{{- $v := .Values }}
{{- if not $v.image.repository }}
{{- $p = append $p "image.repository is required: the image holding eni-manager, eni-cni and enictl (no image is published yet; see the chart README, \"The image\")" }}
{{- end }}
{{- $provider := $v.config.cloud.provider | default "" }}
{{- if not (has $provider (list "aliyun" "aws")) }}
{{- $p = append $p (printf "config.cloud.provider is required and must be aliyun or aws (got %q)" $provider) }}
{{- end }}
{{- if not (trim ($v.config.cluster.id | default "" | toString)) }}
{{- $p = append $p "config.cluster.id is required: a cluster id that tags every ENI this cluster owns, for example prod-hz-1" }}
{{- else if gt (len (toString $v.config.cluster.id)) 128 }}
{{- $p = append $p "config.cluster.id: at most 128 characters (it is a tag value)" }}
{{- end }}
{{- range $k, $_ := ($v.config.cluster.tags | default dict) }}
{{- if hasPrefix "eni-net.io/" $k }}
{{- $p = append $p (printf "config.cluster.tags.%s: the eni-net.io/ prefix is reserved for the manager's own tags" $k) }}
{{- end }}
{{- end }}
{{- $subnets := $v.config.network.subnets | default dict }}
{{- $anySubnet := false }}
{{- if kindIs "map" $subnets }}
{{- range $zone, $ids := $subnets }}
{{- if not (kindIs "slice" $ids) }}
{{- $p = append $p (printf "config.network.subnets.%s must be a list of vSwitch/subnet ids, like [vsw-aaa]" $zone) }}
{{- else if gt (len $ids) 0 }}
{{- $anySubnet = true }}
{{- end }}
{{- end }}
{{- end }}
{{- if not $anySubnet }}
{{- $p = append $p "config.network.subnets is required: the vSwitch (aliyun) or subnet (aws) ids per zone, like {cn-hangzhou-h: [vsw-aaa]}; every zone with nodes must be listed" }}
{{- end }}
{{- if ($v.config.network.node_network | default "kernel" | eq "none") }}
{{- $p = append $p "config.network.node_network: none configures nothing on the node and is only for tests against emulators; remove it" }}
{{- end }}
{{- if hasKey $v.config "daemon" }}
{{- $p = append $p "config.daemon is set by the chart (the socket and state directory must match the DaemonSet's host paths); use metrics.bindAddress and metrics.port for the metrics address" }}
{{- end }}
{{- if hasKey $v.config.cloud "credentials" }}
{{- $p = append $p "config.cloud.credentials is set by the chart from credentials.source; set that instead" }}
{{- end }}
{{- $pool := $v.config.pool | default dict }}
{{- if and (hasKey $pool "min_idle") (hasKey $pool "max_idle") }}
{{- if lt (float64 $pool.max_idle) (float64 $pool.min_idle) }}
{{- $p = append $p (printf "config.pool.max_idle (%v) is below config.pool.min_idle (%v); the high watermark must be at least the low one" $pool.max_idle $pool.min_idle) }}
{{- end }}
{{- end }}
{{- $src := include "eni-net.credentialsSource" . }}
{{- $known := list "ramRole" "instanceProfile" "irsa" "existingSecret" "values" }}
{{- if not (has $src $known) }}
{{- $p = append $p (printf "credentials.source %q is unknown; use one of ramRole (aliyun), instanceProfile (aws), irsa (aws), existingSecret, values" $src) }}
{{- else if and (eq $provider "aliyun") (has $src (list "instanceProfile" "irsa")) }}
{{- $p = append $p (printf "credentials.source %s is for aws; on aliyun use ramRole, existingSecret or values" $src) }}
{{- else if and (eq $provider "aws") (eq $src "ramRole") }}
{{- $p = append $p "credentials.source ramRole is for aliyun; on aws use instanceProfile, irsa, existingSecret or values" }}
{{- end }}
{{- if and (eq $src "existingSecret") (not $v.credentials.existingSecret.name) }}
{{- $p = append $p "credentials.existingSecret.name is required when credentials.source is existingSecret" }}
{{- end }}
{{- if and (eq $src "values") (or (not $v.credentials.accessKeyId) (not $v.credentials.accessKeySecret)) }}
{{- $p = append $p "credentials.accessKeyId and credentials.accessKeySecret are required when credentials.source is values" }}
{{- end }}
{{- if and (eq $src "irsa") (not $v.credentials.irsa.roleArn) }}
{{- $p = append $p "credentials.irsa.roleArn is required when credentials.source is irsa (the IAM role's ARN)" }}
{{- end }}
{{- if and (eq $src "irsa") (not $v.serviceAccount.create) }}
{{- $p = append $p "credentials.source irsa annotates the chart's ServiceAccount: set serviceAccount.create true, or annotate your own and use instanceProfile" }}
{{- end }}
{{- if not (has $v.metrics.bindAddress (list "127.0.0.1" "0.0.0.0")) }}
{{- $p = append $p (printf "metrics.bindAddress %q: use 127.0.0.1 or 0.0.0.0 (the probes and the cni-config container reach the manager on 127.0.0.1)" $v.metrics.bindAddress) }}
{{- end }}
{{- if and $v.serviceMonitor.enabled (ne $v.metrics.bindAddress "0.0.0.0") }}
{{- $p = append $p "serviceMonitor.enabled needs metrics.bindAddress 0.0.0.0: Prometheus scrapes the node's address, not 127.0.0.1" }}
{{- end }}
{{- if not (has $v.cni.mode (list "auto" "exclusive" "ipvlan" "veth")) }}
{{- $p = append $p (printf "cni.mode %q: use auto, exclusive, ipvlan or veth" $v.cni.mode) }}
{{- end }}
{{- if not (has (toString $v.cni.cniVersion) (list "0.4.0" "1.0.0" "1.1.0")) }}
{{- $p = append $p (printf "cni.cniVersion %q: eni-cni speaks 0.4.0, 1.0.0 and 1.1.0" (toString $v.cni.cniVersion)) }}
{{- end }}
{{- if not (has $v.cni.logLevel (list "error" "warn" "info" "debug")) }}
{{- $p = append $p (printf "cni.logLevel %q: use error, warn, info or debug" $v.cni.logLevel) }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9_.-]+\\.conflist$" $v.cni.conflistName) }}
{{- $p = append $p (printf "cni.conflistName %q must be a file name ending in .conflist" $v.cni.conflistName) }}
{{- end }}
{{- /* Service load balancing (services.*, bpf.*): the chart owns every path of it. */}}
{{- $svc := $v.services | default dict }}
{{- $bpf := $v.bpf | default dict }}
{{- $pathRe := "^(/[A-Za-z0-9_.-]+)+$" }}
{{- $dotRe := "(^|/)[.][.]?(/|$)" }}
{{- if hasKey $v.config "services" }}
{{- $p = append $p "config.services is set by the chart (its paths must match the DaemonSet's mounts); use services.enabled, services.source, services.configMap, services.cgroupRoot and bpf.pinDir instead" }}
{{- end }}
{{- range $e := ($v.extraEnv | default list) }}
{{- if and (kindIs "map" $e) (hasPrefix "ENI_MANAGER__SERVICES__" (toString $e.name)) }}
{{- $p = append $p (printf "extraEnv %s: the services section is set by the chart; use the services.* and bpf.* values instead" $e.name) }}
{{- end }}
{{- end }}
{{- $svcSource := toString ($svc.source | default "kubernetes") }}
{{- if not (has $svcSource (list "kubernetes" "files")) }}
{{- $p = append $p (printf "services.source %q: use kubernetes (Services and EndpointSlices from the API server) or files (YAML from the ConfigMap named by services.configMap)" $svcSource) }}
{{- end }}
{{- $cgroupRoot := toString ($svc.cgroupRoot | default "") }}
{{- if or (not (regexMatch $pathRe $cgroupRoot)) (regexMatch $dotRe $cgroupRoot) }}
{{- $p = append $p (printf "services.cgroupRoot %q must be the node's cgroup v2 mount point as an absolute path without a trailing slash, like /sys/fs/cgroup (or /sys/fs/cgroup/unified on a hybrid cgroup v1/v2 node)" $cgroupRoot) }}
{{- end }}
{{- $hostBpffs := toString ($bpf.hostBpffs | default "") }}
{{- $pinDir := toString ($bpf.pinDir | default "") }}
{{- $bpffsOk := and (regexMatch $pathRe $hostBpffs) (not (regexMatch $dotRe $hostBpffs)) }}
{{- if not $bpffsOk }}
{{- $p = append $p (printf "bpf.hostBpffs %q must be an absolute path without a trailing slash where the node has (or gets) its bpf filesystem, like /sys/fs/bpf" $hostBpffs) }}
{{- end }}
{{- if or (not (regexMatch $pathRe $pinDir)) (regexMatch $dotRe $pinDir) }}
{{- $p = append $p (printf "bpf.pinDir %q must be an absolute path without a trailing slash, like /sys/fs/bpf/eni-net" $pinDir) }}
{{- else if and $bpffsOk (not (hasPrefix (printf "%s/" $hostBpffs) $pinDir)) }}
{{- $p = append $p (printf "bpf.pinDir %q must be a directory under bpf.hostBpffs %q (pins survive a restart only on the node's bpf filesystem), like %s/eni-net" $pinDir $hostBpffs $hostBpffs) }}
{{- end }}
{{- if $svc.enabled }}
{{- if and (eq $svcSource "files") (not $svc.configMap) }}
{{- $p = append $p "services.configMap is required when services.source is files: the name of a ConfigMap in the release's namespace whose keys are Service and EndpointSlice *.yaml files" }}
{{- else if and (eq $svcSource "kubernetes") $svc.configMap }}
{{- $p = append $p (printf "services.configMap %q is only read with services.source files; remove it, or set services.source files" $svc.configMap) }}
{{- end }}
{{- if and $svc.k8sServiceHost (regexMatch "[/\\s]" (toString $svc.k8sServiceHost)) }}
{{- $p = append $p (printf "services.k8sServiceHost %q: give the API server's host name or address only, not a URL, like 10.0.0.10 (the port goes in services.k8sServicePort)" $svc.k8sServiceHost) }}
{{- end }}
{{- $apiPort := int ($svc.k8sServicePort | default 0) }}
{{- if or (lt $apiPort 1) (gt $apiPort 65535) }}
{{- $p = append $p (printf "services.k8sServicePort %v: use the API server's port, 1-65535 (usually 443 or 6443)" $svc.k8sServicePort) }}
{{- end }}
{{- $np := $svc.nodeport | default dict }}
{{- if $np.enabled }}
{{- if not $np.links }}
{{- $p = append $p "services.nodeport.links is required when services.nodeport.enabled: the node's links NodePorts arrive on, like [eth0, eth1]" }}
{{- end }}
{{- range $l := ($np.links | default list) }}
{{- if not (regexMatch "^[A-Za-z0-9_.-]{1,15}$" (toString $l)) }}
{{- $p = append $p (printf "services.nodeport.links: %q is not an interface name (1-15 letters, digits, '_', '.' or '-'); use the name `ip link` shows on the node" $l) }}
{{- end }}
{{- end }}
{{- range $a := ($np.addresses | default list) }}
{{- if not (regexMatch "^((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])$" (toString $a)) }}
{{- $p = append $p (printf "services.nodeport.addresses: %q is not an IPv4 address; give the node's addresses, or leave the list empty for the links' own" $a) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- /* NetworkPolicy (policy.*): the chart owns the manager's `policy` section. */}}
{{- $pol := $v.policy | default dict }}
{{- if hasKey $v.config "policy" }}
{{- $p = append $p "config.policy is set by the chart (its paths must match the DaemonSet's mounts); use policy.enabled, policy.source, policy.configMap and bpf.pinDir instead" }}
{{- end }}
{{- range $e := ($v.extraEnv | default list) }}
{{- if and (kindIs "map" $e) (hasPrefix "ENI_MANAGER__POLICY__" (toString $e.name)) }}
{{- $p = append $p (printf "extraEnv %s: the policy section is set by the chart; use the policy.* and bpf.* values instead" $e.name) }}
{{- end }}
{{- end }}
{{- $polSource := toString ($pol.source | default "kubernetes") }}
{{- if not (has $polSource (list "kubernetes" "files")) }}
{{- $p = append $p (printf "policy.source %q: use kubernetes (NetworkPolicies, Pods and Namespaces from the API server) or files (YAML from the ConfigMap named by policy.configMap)" $polSource) }}
{{- end }}
{{- if $pol.enabled }}
{{- if and (eq $polSource "files") (not $pol.configMap) }}
{{- $p = append $p "policy.configMap is required when policy.source is files: the name of a ConfigMap in the release's namespace whose keys are NetworkPolicy, Pod and Namespace *.yaml files" }}
{{- else if and (eq $polSource "kubernetes") $pol.configMap }}
{{- $p = append $p (printf "policy.configMap %q is only read with policy.source files; remove it, or set policy.source files" $pol.configMap) }}
{{- end }}
{{- end }}
{{- /* Masquerade (masquerade.*): the chart owns the manager's `masquerade` section. */}}
{{- $masq := $v.masquerade | default dict }}
{{- $cidrRe := "^((25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])[.]){3}(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])/([0-9]|[12][0-9]|3[0-2])$" }}
{{- if hasKey $v.config "masquerade" }}
{{- $p = append $p "config.masquerade is set by the chart (its pin directory and file must match the DaemonSet's mounts); use masquerade.enabled, masquerade.links, masquerade.vpcCidrs, masquerade.nonMasqueradeCidrs, masquerade.masqLinkLocal, masquerade.configMap and bpf.pinDir instead" }}
{{- end }}
{{- range $e := ($v.extraEnv | default list) }}
{{- if and (kindIs "map" $e) (hasPrefix "ENI_MANAGER__MASQUERADE__" (toString $e.name)) }}
{{- $p = append $p (printf "extraEnv %s: the masquerade section is set by the chart; use the masquerade.* and bpf.* values instead" $e.name) }}
{{- end }}
{{- end }}
{{- if $masq.enabled }}
{{- $links := $masq.links | default list }}
{{- if not (kindIs "slice" $links) }}
{{- $p = append $p (printf "masquerade.links must be a list of interface names, like [eth0, eth1] (got %v)" $links) }}
{{- else if not $links }}
{{- $p = append $p "masquerade.links is required when masquerade.enabled: the node's uplinks pod traffic leaves through (the primary NIC and the secondary ENIs' links), like [eth0, eth1]" }}
{{- else }}
{{- $seen := list }}
{{- range $l := $links }}
{{- if not (regexMatch "^[A-Za-z0-9_.*?-]{1,15}$" (toString $l)) }}
{{- $p = append $p (printf "masquerade.links: %q is not an interface name or pattern (1-15 letters, digits, '_', '.', '-', '*' or '?'); use the name `ip link` shows on the node, or a pattern like eth*" $l) }}
{{- else if has (toString $l) $seen }}
{{- $p = append $p (printf "masquerade.links: %q is listed twice; remove one" $l) }}
{{- end }}
{{- $seen = append $seen (toString $l) }}
{{- end }}
{{- end }}
{{- $vpc := $masq.vpcCidrs | default list }}
{{- $nonMasq := $masq.nonMasqueradeCidrs | default list }}
{{- if not (kindIs "slice" $vpc) }}
{{- $p = append $p (printf "masquerade.vpcCidrs must be a list of IPv4 CIDRs, like [172.16.0.0/12] (got %v)" $vpc) }}
{{- $vpc = list }}
{{- end }}
{{- if not (kindIs "slice" $nonMasq) }}
{{- $p = append $p (printf "masquerade.nonMasqueradeCidrs must be a list of IPv4 CIDRs, like [10.0.0.0/8], or empty for ip-masq-agent's default list (got %v)" $nonMasq) }}
{{- $nonMasq = list }}
{{- end }}
{{- range $c := $vpc }}
{{- if not (regexMatch $cidrRe (toString $c)) }}
{{- $p = append $p (printf "masquerade.vpcCidrs: %q is not an IPv4 CIDR; write it as a.b.c.d/n, like 172.16.0.0/12" $c) }}
{{- end }}
{{- end }}
{{- range $c := $nonMasq }}
{{- if not (regexMatch $cidrRe (toString $c)) }}
{{- $p = append $p (printf "masquerade.nonMasqueradeCidrs: %q is not an IPv4 CIDR; write it as a.b.c.d/n, like 10.0.0.0/8" $c) }}
{{- end }}
{{- end }}
{{- /* The manager's limit: the list plus the VPC's blocks plus link-local, 1024 entries
(its default list has 11). */}}
{{- $total := add (ternary (len $nonMasq) 11 (gt (len $nonMasq) 0)) (len $vpc) 1 }}
{{- if gt (int $total) 1024 }}
{{- $p = append $p (printf "masquerade.nonMasqueradeCidrs: %d entries with masquerade.vpcCidrs and the link-local one, at most 1024 fit; merge adjacent ranges" (int $total)) }}
{{- end }}
{{- if not (kindIs "bool" ($masq.masqLinkLocal | default false)) }}
{{- $p = append $p (printf "masquerade.masqLinkLocal %v: use true or false" $masq.masqLinkLocal) }}
{{- end }}
{{- if $masq.configMap }}
{{- $key := toString ($masq.configMapKey | default "") }}
{{- if or (not (regexMatch "^[-._A-Za-z0-9]+$" $key)) (has $key (list "." "..")) }}
{{- $p = append $p (printf "masquerade.configMapKey %q: give the ConfigMap key holding the ip-masq-agent file (letters, digits, '-', '_' or '.'), like config" $key) }}
{{- end }}
{{- if not (regexMatch "^[1-9][0-9]*$" (toString ($masq.resyncIntervalSeconds | default 0))) }}
{{- $p = append $p (printf "masquerade.resyncIntervalSeconds %v: give whole seconds, at least 1, like 60" $masq.resyncIntervalSeconds) }}
{{- end }}
{{- end }}
{{- end }}
{{- if $p }}
{{- fail (printf "\n\neni-net: %d problem(s) in the values:\n  - %s\n" (len $p) (join "\n  - " $p)) }}
{{- end }}
{{- end }}

{{/*
A map without its empty-string and null entries, so the manager's defaults apply to them.
*/}}
{{- define "eni-net.compact" -}}
{{- $out := dict }}
{{- range $k, $val := . }}
{{- if not (or (kindIs "invalid" $val) (and (kindIs "string" $val) (eq $val ""))) }}
{{- $_ := set $out $k $val }}
{{- end }}
{{- end }}
{{- toYaml $out }}
{{- end }}

{{/* The manager's configuration file. */}}
{{- define "eni-net.managerConfig" -}}
{{- $cloud := deepCopy .Values.config.cloud }}
{{- $src := include "eni-net.credentialsSource" . }}
{{- if eq .Values.config.cloud.provider "aliyun" }}
{{- if eq $src "ramRole" }}
{{- $_ := set $cloud "credentials" "ram_role" }}
{{- else }}
{{- $_ := set $cloud "credentials" "env" }}
{{- end }}
{{- else }}
{{- $_ := set $cloud "credentials" "chain" }}
{{- end }}
# The eni-manager configuration (docs/configuration.md), rendered by the eni-net chart.
cloud:
{{- include "eni-net.compact" $cloud | nindent 2 }}
cluster:
{{- include "eni-net.compact" .Values.config.cluster | nindent 2 }}
network:
{{- include "eni-net.compact" .Values.config.network | nindent 2 }}
pool:
{{- include "eni-net.compact" (.Values.config.pool | default dict) | nindent 2 }}
gc:
{{- include "eni-net.compact" (.Values.config.gc | default dict) | nindent 2 }}
daemon:
  socket: /run/eni-manager/eni-manager.sock
  state_dir: /var/lib/eni-manager
  metrics_address: {{ printf "%s:%d" .Values.metrics.bindAddress (int .Values.metrics.port) | quote }}
{{- if .Values.services.enabled }}
# eBPF Service load balancing (docs/services.md): the paths are the DaemonSet's mounts. The
# node name comes from the environment (ENI_MANAGER__SERVICES__NODE_NAME, spec.nodeName).
services:
  enabled: true
  source: {{ .Values.services.source | default "kubernetes" }}
  {{- if eq (.Values.services.source | default "kubernetes") "files" }}
  dir: {{ include "eni-net.servicesDir" . }}
  {{- end }}
  bpf_pin_dir: {{ .Values.bpf.pinDir }}
  cgroup: {{ include "eni-net.cgroupMountPath" . }}
  {{- with .Values.services.nodeport }}
  {{- if .enabled }}
  nodeport:
    enabled: true
    links: {{ .links | toJson }}
    addresses: {{ .addresses | default list | toJson }}
  {{- end }}
  {{- end }}
{{- end }}
{{- with .Values.policy }}
{{- if .enabled }}
# eBPF NetworkPolicy (docs/network-policy.md): maps pinned next to the services' (bpf.pinDir).
policy:
  enabled: true
  source: {{ .source | default "kubernetes" }}
  {{- if eq (.source | default "kubernetes") "files" }}
  dir: {{ include "eni-net.policyDir" $ }}
  {{- end }}
  bpf_pin_dir: {{ $.Values.bpf.pinDir }}
{{- end }}
{{- end }}
{{- with .Values.masquerade }}
{{- if .enabled }}
# eBPF masquerade (docs/network-policy.md, Masquerade): maps pinned next to the services'
# (bpf.pinDir); an empty non_masquerade_cidrs is left out for ip-masq-agent's default list.
masquerade:
  enabled: true
  links: {{ .links | toJson }}
  vpc_cidrs: {{ .vpcCidrs | default list | toJson }}
  {{- with .nonMasqueradeCidrs }}
  non_masquerade_cidrs: {{ . | toJson }}
  {{- end }}
  masq_link_local: {{ .masqLinkLocal | default false }}
  {{- if .configMap }}
  config_file: {{ include "eni-net.masqueradeFile" $ }}
  resync_interval_s: {{ int .resyncIntervalSeconds }}
  {{- end }}
  bpf_pin_dir: {{ $.Values.bpf.pinDir }}
{{- end }}
{{- end }}
{{- end }}

{{/* Where the manager sees the ip-masq-agent ConfigMap (masquerade.configMap): the whole
ConfigMap as a directory, not a subPath, so the kubelet's updates reach the file. */}}
{{- define "eni-net.masqueradeDir" -}}
/etc/eni-net/masquerade
{{- end }}

{{/* The ip-masq-agent file the manager re-reads (masquerade.config_file). */}}
{{- define "eni-net.masqueradeFile" -}}
{{- printf "%s/%s" (include "eni-net.masqueradeDir" .) .Values.masquerade.configMapKey }}
{{- end }}

{{/* Where the manager sees the policy ConfigMap (policy.source files). */}}
{{- define "eni-net.policyDir" -}}
/etc/eni-net/policy
{{- end }}

{{/* Where the manager sees the node's cgroup v2 root: /host plus the host path. */}}
{{- define "eni-net.cgroupMountPath" -}}
{{- printf "/host%s" .Values.services.cgroupRoot }}
{{- end }}

{{/* Where the manager sees the services ConfigMap (source files). Not under /etc/eni-manager:
a volume inside the read-only config volume would need a mount point created in it. */}}
{{- define "eni-net.servicesDir" -}}
/etc/eni-net/services
{{- end }}

{{/* The CNI network configuration list. */}}
{{- define "eni-net.conflist" -}}
{{- $plugin := dict "type" "eni-cni" "socket" "/run/eni-manager/eni-manager.sock" "mode" .Values.cni.mode "log_level" .Values.cni.logLevel }}
{{- if .Values.cni.logFile }}{{ $_ := set $plugin "log_file" .Values.cni.logFile }}{{ end }}
{{- if gt (int .Values.cni.mtu) 0 }}{{ $_ := set $plugin "mtu" (int .Values.cni.mtu) }}{{ end }}
{{- if gt (int .Values.cni.timeoutMs) 0 }}{{ $_ := set $plugin "timeout_ms" (int .Values.cni.timeoutMs) }}{{ end }}
{{- $caps := dict }}
{{- if .Values.cni.exclusiveEniCapability }}{{ $_ := set $caps "exclusiveEni" true }}{{ end }}
{{- /* hostPort: served by the manager's per-packet path, so asked for only with it. */}}
{{- if and .Values.services.enabled (.Values.services.nodeport | default dict).enabled }}{{ $_ := set $caps "portMappings" true }}{{ end }}
{{- if $caps }}{{ $_ := set $plugin "capabilities" $caps }}{{ end }}
{{- $plugins := prepend (.Values.cni.chainedPlugins | default list) $plugin }}
{{- dict "cniVersion" (toString .Values.cni.cniVersion) "name" .Values.cni.networkName "plugins" $plugins | toPrettyJson }}
{{- end }}
