package main

import (
	"os"
	"strings"
	"testing"
)

func fixture(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("testdata/rendered.yaml")
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func problemsOf(t *testing.T, stream string) []string {
	t.Helper()
	r, err := parseRendered(stream)
	if err != nil {
		t.Fatal(err)
	}
	return checkPolicy(r)
}

// The frozen production render passes every rule.
func TestValidRenderHasNoProblem(t *testing.T) {
	if problems := problemsOf(t, fixture(t)); len(problems) != 0 {
		t.Fatalf("want no problem, got %q", problems)
	}
}

// Each rule fails on a render that breaks it, naming the resource and the reason.
func TestEachRuleFails(t *testing.T) {
	cases := []struct {
		name, old, new, want string
	}{
		{"grace period below the shutdown grace + margin",
			"terminationGracePeriodSeconds: 50", "terminationGracePeriodSeconds: 40",
			"Deployment/orders-projector container consumer: terminationGracePeriodSeconds 40 < EVENTQ_SHUTDOWN_GRACE_S 30 + 15 s margin"},
		{"a longer shutdown grace in the ConfigMap",
			`EVENTQ_SHUTDOWN_GRACE_S: "30"`, `EVENTQ_SHUTDOWN_GRACE_S: "60"`,
			"terminationGracePeriodSeconds 50 < EVENTQ_SHUTDOWN_GRACE_S 60"},
		{"more group members than partitions",
			"maxReplicaCount: 3", "maxReplicaCount: 4",
			"maxReplicaCount 4 × 2 workers = 8 group members > 6 partitions"},
		{"more workers than the partitions allow",
			`EVENTQ_WORKERS: "2"`, `EVENTQ_WORKERS: "3"`,
			"maxReplicaCount 3 × 3 workers = 9 group members > 6 partitions"},
		{"no partition count",
			`eventq/topic-partitions: "6"`, `eventq/other: "6"`,
			"needs the annotation eventq/topic-partitions"},
		{"writable root filesystem",
			"readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false",
			"Deployment/orders-projector container consumer: readOnlyRootFilesystem is not true"},
		{"root allowed",
			"runAsNonRoot: true", "runAsNonRoot: false",
			"Deployment/orders-projector container consumer: runAsNonRoot is not true"},
		{"no readiness probe",
			"readinessProbe:", "x-readinessProbe:",
			"Deployment/orders-projector container consumer: needs a livenessProbe and a readinessProbe"},
		{"readiness probe on the wrong path",
			"path: /readyz", "path: /livez",
			"readinessProbe must GET /readyz"},
		{"probe on another port than the health port",
			"- \"8080\"", "- \"9090\"",
			"livenessProbe probes port 8080, the health port is 9090"},
		{"health server on the loopback only",
			"EVENTQ_HEALTH_HOST: 0.0.0.0", "EVENTQ_HEALTH_HOST: 127.0.0.1",
			`EVENTQ_HEALTH_HOST is "127.0.0.1"`},
		{"idle consumers allowed",
			`allowIdleConsumers: "false"`, `allowIdleConsumers: "true"`,
			"allowIdleConsumers is true"},
		{"KEDA starts new groups elsewhere than the daemon",
			"offsetResetPolicy: earliest", "offsetResetPolicy: latest",
			`offsetResetPolicy "latest" differs from the daemon's EVENTQ_AUTO_OFFSET_RESET "earliest"`},
		{"KEDA without SASL to a SASL broker",
			"sasl: scram_sha512", "sasl: none",
			`sasl "none" does not fit the daemon's EVENTQ_SECURITY_PROTOCOL SASL_SSL`},
		{"KEDA watching another group",
			"consumerGroup: orders-projector", "consumerGroup: orders",
			`consumerGroup "orders" is not the daemon's group "orders-projector"`},
		{"replicas fixed under KEDA",
			"spec:\n  progressDeadlineSeconds: 600", "spec:\n  replicas: 2\n  progressDeadlineSeconds: 600",
			"has spec.replicas although ScaledObject/orders-projector scales it"},
		{"an untagged image",
			"image: ghcr.io/example/orders-projector:1.0.0", "image: ghcr.io/example/orders-projector",
			`image "ghcr.io/example/orders-projector" has no release tag`},
		{"no memory limit",
			"limits:\n            memory: 640Mi", "limits: {}",
			"Deployment/orders-projector container consumer: no memory limit"},
		{"a migrate Job not named after the release",
			"name: orders-projector-migrate-1.0.0", "name: orders-projector-migrate",
			"the migrate Job's name should end with its image tag (-1.0.0)"},
		{"a PDB selecting nothing",
			"matchLabels:\n      app.kubernetes.io/component: consumer\n      app.kubernetes.io/name: orders-projector\n  unhealthyPodEvictionPolicy",
			"matchLabels:\n      app.kubernetes.io/component: nothing\n      app.kubernetes.io/name: orders-projector\n  unhealthyPodEvictionPolicy",
			"PodDisruptionBudget/orders-projector: selects the pods of no Deployment"},
	}
	valid := fixture(t)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(valid, tc.old) {
				t.Fatalf("fixture has no %q", tc.old)
			}
			problems := problemsOf(t, strings.Replace(valid, tc.old, tc.new, 1))
			for _, p := range problems {
				if strings.Contains(p, tc.want) {
					return
				}
			}
			t.Fatalf("want a problem containing %q, got %q", tc.want, problems)
		})
	}
}
