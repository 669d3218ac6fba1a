{{/* Names, labels and the peer lists of the StrataMQ chart. */}}

{{- define "strata.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "strata.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "strata.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strata.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "strata.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The headless Service that gives every pod a stable DNS name. */}}
{{- define "strata.peersService" -}}
{{- printf "%s-peers" (include "strata.fullname" .) -}}
{{- end -}}

{{/* The StatefulSet whose pods are WAL replicas: the wal one when split, else the main one. */}}
{{- define "strata.walStatefulSet" -}}
{{- if eq .Values.topology "split" -}}
{{- printf "%s-wal" (include "strata.fullname" .) -}}
{{- else -}}
{{- include "strata.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "strata.walReplicas" -}}
{{- if eq .Values.topology "split" -}}{{ .Values.wal.replicas }}{{- else -}}{{ .Values.replicas }}{{- end -}}
{{- end -}}

{{/* meta.peers: id@host:port of every pod of the main StatefulSet, as a JSON list. */}}
{{- define "strata.metaPeers" -}}
{{- $fullname := include "strata.fullname" . -}}
{{- $svc := include "strata.peersService" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $peers = append $peers (printf "%d@%s-%d.%s.%s.svc.cluster.local:%d" (add1 $i) $fullname $i $svc $.Release.Namespace (int $.Values.ports.meta)) -}}
{{- end -}}
{{- toJson $peers -}}
{{- end -}}

{{/* wal.peers: host:port of every WAL replica pod, as a JSON list. */}}
{{- define "strata.walPeers" -}}
{{- $sts := include "strata.walStatefulSet" . -}}
{{- $svc := include "strata.peersService" . -}}
{{- $peers := list -}}
{{- range $i := until (int (include "strata.walReplicas" .)) -}}
{{- $peers = append $peers (printf "%s-%d.%s.%s.svc.cluster.local:%d" $sts $i $svc $.Release.Namespace (int $.Values.ports.wal)) -}}
{{- end -}}
{{- toJson $peers -}}
{{- end -}}

{{/* Host names (no port) of every peer, for the start script to wait on. */}}
{{- define "strata.peerHosts" -}}
{{- $hosts := list -}}
{{- range $p := (include "strata.metaPeers" . | fromJsonArray) -}}
{{- $hosts = append $hosts (regexReplaceAll "^[0-9]+@(.*):[0-9]+$" $p "${1}") -}}
{{- end -}}
{{- range $p := (include "strata.walPeers" . | fromJsonArray) -}}
{{- $hosts = append $hosts (regexReplaceAll ":[0-9]+$" $p "") -}}
{{- end -}}
{{- $hosts | uniq | join " " -}}
{{- end -}}
