{{/* Names and labels */}}
{{- define "vlm.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "vlm.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "vlm.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "vlm.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "vlm.cudaImage" -}}
{{ .Values.image.repository }}:{{ .Values.image.cudaTag | default (printf "%s-cuda" (.Values.image.tag | default .Chart.AppVersion)) }}
{{- end -}}

{{/* Kafka bootstrap servers: Strimzi's bootstrap service or the external brokers. */}}
{{- define "vlm.kafkaBootstrap" -}}
{{- if .Values.kafka.strimzi.enabled -}}
{{ .Values.kafka.strimzi.clusterName }}-kafka-bootstrap.{{ .Release.Namespace }}.svc:9092
{{- else -}}
{{ required "kafka.external.bootstrapServers is required unless kafka.strimzi.enabled is true" .Values.kafka.external.bootstrapServers }}
{{- end -}}
{{- end -}}

{{- define "vlm.registryClaim" -}}
{{- .Values.registry.persistentVolumeClaim.existingClaim | default (printf "%s-registry" (include "vlm.fullname" .)) -}}
{{- end -}}

{{/* Environment every vlm-stream container gets: Kafka security from Secrets, registry.
Called with (dict "root" $ "component" "ingest|ray|view"): each component logs in as its own
Kafka principal when kafka.external.sasl.secrets names a Secret for it. */}}
{{- define "vlm.env" -}}
{{- $component := .component -}}
{{- $root := .root -}}
{{- with .root -}}
- name: HOME  # the root filesystem is read-only; caches go to the /tmp emptyDir
  value: /tmp
- name: VLM_REGISTRY_DIR
  value: {{ printf "%s/models" .Values.registry.mountPath | quote }}
- name: RAY_USAGE_STATS_ENABLED
  value: "0"
{{- if not .Values.kafka.strimzi.enabled }}
{{- with .Values.kafka.external }}
- name: VLM_KAFKA_SECURITY_PROTOCOL
  value: {{ .securityProtocol | quote }}
{{- if hasPrefix "SASL" .securityProtocol }}
- name: VLM_KAFKA_SASL_MECHANISM
  value: {{ .sasl.mechanism | quote }}
{{- $secret := (get (.sasl.secrets | default dict) $component) | default .sasl.secretName }}
- name: VLM_KAFKA_SASL_USERNAME
  valueFrom:
    secretKeyRef: {name: {{ required (printf "kafka.external.sasl.secretName (or sasl.secrets.%s) is required for SASL" $component) $secret }}, key: username}
- name: VLM_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $secret }}, key: password}
{{- end }}
{{- if include "vlm.kafkaTls" $root }}
- name: VLM_KAFKA_SSL_CAFILE
  value: /etc/vlm-stream/kafka-tls/ca.crt
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/* "true" when external Kafka uses a TLS CA from a Secret, else empty. */}}
{{- define "vlm.kafkaTls" -}}
{{- if and (not .Values.kafka.strimzi.enabled) .Values.kafka.external.tls.secretName }}true{{ end -}}
{{- end -}}

{{/* The Kafka CA mount and volume; empty unless external Kafka uses a TLS Secret. */}}
{{- define "vlm.kafkaTlsMount" -}}
{{- if include "vlm.kafkaTls" . }}
- name: kafka-tls
  mountPath: /etc/vlm-stream/kafka-tls
  readOnly: true
{{- end }}
{{- end -}}

{{- define "vlm.kafkaTlsVolume" -}}
{{- if include "vlm.kafkaTls" . }}
- name: kafka-tls
  secret:
    secretName: {{ .Values.kafka.external.tls.secretName }}
{{- end }}
{{- end -}}

{{- define "vlm.volumeMounts" -}}
{{ include "vlm.tmpMount" . }}
- name: registry
  mountPath: {{ .Values.registry.mountPath }}
{{- include "vlm.kafkaTlsMount" . }}
{{- end -}}

{{- define "vlm.volumes" -}}
{{ include "vlm.tmpVolume" . }}
- name: registry
  persistentVolumeClaim:
    claimName: {{ include "vlm.registryClaim" . }}
{{- include "vlm.kafkaTlsVolume" . }}
{{- end -}}

{{/* The Serve config with the chart's Kafka and registry filled in. */}}
{{- define "vlm.serveConfig" -}}
{{- $config := deepCopy .Values.serve.config -}}
{{- $skipped := list -}}
{{- $apps := list -}}
{{- range $app := $config.applications -}}
{{- if and $app.args.optional (not $.Values.serve.optionalApplications) -}}
{{- $skipped = append $skipped $app.name -}}
{{- else -}}
{{- $apps = append $apps $app -}}
{{- end -}}
{{- end -}}
{{- range $app := $apps -}}
{{- $_ := set $app.args "bootstrap" (include "vlm.kafkaBootstrap" $) -}}
{{- $_ := set $app.args "registry_dir" (printf "%s/models" $.Values.registry.mountPath) -}}
{{- /* cameras served by a left-out application go back to this one's default policy */ -}}
{{- $overrides := dict -}}
{{- if $app.args.cameras -}}{{- $overrides = $app.args.cameras.overrides | default dict -}}{{- end -}}
{{- $orphans := list -}}
{{- range $camera, $policy := $overrides -}}
{{- if and (kindIs "map" $policy) (has ($policy.served_by | default "") $skipped) -}}
{{- $orphans = append $orphans $camera -}}
{{- end -}}
{{- end -}}
{{- range $camera := $orphans -}}
{{- $_ := unset $overrides $camera -}}
{{- end -}}
{{- end -}}
{{- $_ := set $config "applications" $apps -}}
{{- toYaml $config -}}
{{- end -}}

{{/* A Ray pod template. Args: dict "root" . "image" img "resources" r "nodeSelector" n "tolerations" t "gpus" g */}}
{{- define "vlm.rayPod" -}}
{{- $root := .root -}}
metadata:
  labels: {{- include "vlm.selector" $root | nindent 4 }}
    app.kubernetes.io/component: ray
spec:
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets: {{ toYaml . | nindent 4 }}
  {{- end }}
  {{- include "vlm.podSecurity" . | nindent 2 }}
  {{- with .nodeSelector }}
  nodeSelector: {{ toYaml . | nindent 4 }}
  {{- end }}
  {{- with .tolerations }}
  tolerations: {{ toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: ray
      image: {{ .image }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      {{- include "vlm.containerSecurity" . | nindent 6 }}
      env: {{ include "vlm.env" (dict "root" $root "component" "ray") | nindent 8 }}
      {{- $resources := deepCopy .resources }}
      {{- if .gpus }}
      {{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" (toString .gpus)) ($resources.limits | default dict)) }}
      {{- end }}
      resources: {{ toYaml $resources | nindent 8 }}
      ports:
        - {name: metrics, containerPort: 8080}
      volumeMounts: {{ include "vlm.volumeMounts" $root | nindent 8 }}
  volumes: {{ include "vlm.volumes" $root | nindent 4 }}
{{- end -}}


{{/* Every container: no privilege escalation, no capabilities, the runtime's seccomp
profile, a read-only root filesystem (writable /tmp is an emptyDir: "vlm.tmpMount"). */}}
{{- define "vlm.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  runAsNonRoot: true
  capabilities:
    drop: [ALL]
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "vlm.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 1000
  fsGroup: 1000
  seccompProfile:
    type: RuntimeDefault
{{- end -}}

{{- define "vlm.tmpMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "vlm.tmpVolume" -}}
- name: tmp
  emptyDir: {}
{{- end -}}
