{{/*
Unsafe values stop `helm template` / `helm install` with a message. Included from the
StatefulSet, so every render runs it.
*/}}
{{- define "zeptodb.validate" -}}
{{- $v := .Values }}
{{- $replicas := int $v.replicaCount }}
{{- if lt $replicas 1 }}
{{- fail "replicaCount must be at least 1" }}
{{- end }}
{{- if $v.pdb.enabled }}
{{- if ge (int $v.pdb.minAvailable) $replicas }}
{{- fail (printf "UNSAFE: pdb.minAvailable (%d) must be less than replicaCount (%d): with minAvailable >= replicas no pod can ever be evicted, so node drains and cluster upgrades hang. Lower pdb.minAvailable or raise replicaCount (or set pdb.enabled=false for a single node)." (int $v.pdb.minAvailable) $replicas) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.pdb.minAvailable) (int $v.autoscaling.minReplicas)) }}
{{- fail (printf "UNSAFE: pdb.minAvailable (%d) must be <= autoscaling.minReplicas (%d)" (int $v.pdb.minAvailable) (int $v.autoscaling.minReplicas)) }}
{{- end }}
{{- end }}
{{- if $v.cluster.enabled }}
{{- if and $v.cluster.ha (ge (int $v.cluster.replicationFactor) 2) (lt $replicas 3) }}
{{- fail (printf "UNSAFE: replicaCount %d < 3 with cluster.replicationFactor %d and cluster.ha=true: the raft metadata group needs 3 voters to survive one node failure. Set replicaCount >= 3, or cluster.ha=false to accept a cluster that stops on one failure." $replicas (int $v.cluster.replicationFactor)) }}
{{- end }}
{{- if and (not $v.persistence.enabled) (not $v.persistence.acknowledgeEphemeral) }}
{{- fail "UNSAFE: persistence.enabled=false in cluster mode: every pod restart loses that node's WAL, checkpoints and raft log. Set persistence.enabled=true, or persistence.acknowledgeEphemeral=true if you really want throwaway storage (tests only)." }}
{{- end }}
{{- if and $v.cluster.ha (lt (int $v.cluster.voters) 3) }}
{{- fail (printf "UNSAFE: cluster.voters %d < 3 with cluster.ha=true: a raft group of fewer than 3 voters cannot survive one failure." (int $v.cluster.voters)) }}
{{- end }}
{{- if not $v.cluster.learners }}
{{- if gt $replicas (int $v.cluster.voters) }}
{{- fail (printf "UNSAFE: replicaCount %d > cluster.voters %d: pods %d.. would be data nodes (raft learners) that must be decommissioned before a scale-down (POST /admin/decommission, docs/operations.md scenario 8). Set cluster.learners=true to accept that, or cluster.voters=%d (an odd number), or keep replicaCount <= %d." $replicas (int $v.cluster.voters) (int $v.cluster.voters) $replicas (int $v.cluster.voters)) }}
{{- end }}
{{- if and $v.autoscaling.enabled (gt (int $v.autoscaling.maxReplicas) (int $v.cluster.voters)) }}
{{- fail (printf "UNSAFE: autoscaling.maxReplicas %d > cluster.voters %d: pods added by the HPA would be data nodes (raft learners) that must be decommissioned before the HPA removes them. Set cluster.learners=true to accept that (and keep the HPA from scaling in on its own)." (int $v.autoscaling.maxReplicas) (int $v.cluster.voters)) }}
{{- end }}
{{- end }}
{{- if not (has (int $v.cluster.replicationFactor) (list 1 2)) }}
{{- fail "cluster.replicationFactor must be 1 or 2" }}
{{- end }}
{{- if gt (int $v.cluster.replicationFactor) $replicas }}
{{- fail (printf "cluster.replicationFactor %d needs at least as many replicas (replicaCount %d)" (int $v.cluster.replicationFactor) $replicas) }}
{{- end }}
{{- if not (has $v.cluster.ack (list "local" "replicated")) }}
{{- fail "cluster.ack must be local or replicated" }}
{{- end }}
{{- else }}
{{- if gt $replicas 1 }}
{{- fail (printf "cluster.enabled=false with replicaCount %d: without cluster mode each pod is an independent database behind one Service. Use replicaCount 1 (and pdb.enabled=false), or cluster.enabled=true." $replicas) }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- fail "autoscaling.enabled needs cluster.enabled: a single node cannot scale out" }}
{{- end }}
{{- end }}
{{- if $v.persistence.existingClaim }}
{{- if or $v.cluster.enabled (gt $replicas 1) }}
{{- fail "persistence.existingClaim is for a single node (replicaCount 1, cluster.enabled=false): one ReadWriteOnce PVC cannot back several pods. To restore one cluster pod's volume, create the PVC as data-<fullname>-<ordinal> from the snapshot and delete the pod (docs/operations.md, scenario 5)." }}
{{- end }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- if lt (int $v.autoscaling.minReplicas) 3 }}
{{- fail (printf "UNSAFE: autoscaling.minReplicas (%d) must be >= 3 (raft voters + RF 2)" (int $v.autoscaling.minReplicas)) }}
{{- end }}
{{- if lt (int $v.autoscaling.maxReplicas) (int $v.autoscaling.minReplicas) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- end }}
{{- $budget := int (include "zeptodb.shutdownBudget" .) }}
{{- if ge $budget (int $v.terminationGracePeriodSeconds) }}
{{- fail (printf "UNSAFE: terminationGracePeriodSeconds (%d) must be greater than lifecycle.preStopSleepSeconds + shutdown.drainTimeoutSeconds + shutdown.drainDelaySeconds + shutdown.timeoutSeconds%s (%d): otherwise the kubelet SIGKILLs zeptod before its final checkpoint." (int $v.terminationGracePeriodSeconds) (ternary " + lifecycle.scaleInTimeoutSeconds (the scale-in decommission of cluster.learners)" "" (eq (include "zeptodb.scaleInHook" .) "true")) $budget) }}
{{- end }}
{{- if ne (int $v.updateStrategy.rollingUpdate.maxUnavailable) 1 }}
{{- fail "updateStrategy.rollingUpdate.maxUnavailable must be 1: the chart updates one pod at a time" }}
{{- end }}
{{- if and (not $v.cluster.insecure) $v.cluster.enabled (eq $v.auth.clusterSecretKey "") }}
{{- fail "auth.clusterSecretKey must name the key of the cluster secret" }}
{{- end }}
{{- if and $v.backup.enabled (not $v.backup.url) }}
{{- fail "backup.enabled needs backup.url (e.g. s3://bucket/prefix/)" }}
{{- end }}
{{- end }}
