package main

// The ScaledObject rules: KEDA must scale the daemons it watches, within the partitions,
// reading the group the way the daemons do.

import (
	"fmt"
	"strconv"
	"strings"
)

func checkScaledObject(r *rendered, res resource, deployments map[string]workload, fail func(string, ...any)) {
	where := res.Kind + "/" + res.Metadata.Name
	spec, _ := res.raw["spec"].(object)
	target, _ := spec["scaleTargetRef"].(object)
	name, _ := target["name"].(string)
	d, ok := deployments[name]
	if !ok {
		fail("%s: scaleTargetRef %q is not a Deployment in the output", where, name)
		return
	}
	if d.hasReplica {
		fail("Deployment/%s: has spec.replicas although %s scales it (each apply would reset the replicas)", name, where)
	}
	partitions, err := strconv.Atoi(res.Metadata.Annotations[partitionsAnnotation])
	if err != nil || partitions < 1 {
		fail("%s: needs the annotation %s: the topic's partition count", where, partitionsAnnotation)
		return
	}
	maxReplicas := 100 // KEDA's default
	if v, ok := spec["maxReplicaCount"].(float64); ok {
		maxReplicas = int(v)
	}
	var consumer *container
	for i := range d.pod.Containers {
		if eventqCommand(d.pod.Containers[i]) == "consume" {
			consumer = &d.pod.Containers[i]
		}
	}
	if consumer == nil {
		fail("%s: Deployment/%s runs no eventq consume container", where, name)
		return
	}
	workers, err := strconv.Atoi(r.setting(*consumer, "EVENTQ_WORKERS", "--workers", "1"))
	if err != nil {
		fail("Deployment/%s container %s: EVENTQ_WORKERS is not a whole number", name, consumer.Name)
		workers = 1
	}
	if maxReplicas*workers > partitions {
		fail("%s: maxReplicaCount %d × %d workers = %d group members > %d partitions (the extra ones would sit idle and not ready)",
			where, maxReplicas, workers, maxReplicas*workers, partitions)
	}
	triggers, _ := spec["triggers"].([]any)
	kafka := 0
	for _, t := range triggers {
		trigger, _ := t.(object)
		if trigger["type"] != "kafka" {
			continue
		}
		kafka++
		meta := map[string]string{}
		if m, ok := trigger["metadata"].(object); ok {
			for k, v := range m {
				meta[k] = fmt.Sprint(v)
			}
		}
		// KEDA reads NAMEFromEnv from the scale target's container.
		for _, key := range []string{"bootstrapServers", "consumerGroup", "topic"} {
			if env := meta[key+"FromEnv"]; env != "" {
				meta[key] = r.setting(*consumer, env, "", "")
				if meta[key] == "" {
					fail("%s: %sFromEnv names %s, which container %s does not set", where, key, env, consumer.Name)
				}
			}
		}
		for _, key := range []string{"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} {
			if meta[key] == "" {
				fail("%s: kafka trigger has no %s", where, key)
			}
		}
		if n, err := strconv.Atoi(meta["lagThreshold"]); meta["lagThreshold"] != "" && (err != nil || n < 1) {
			fail("%s: lagThreshold %q is not a positive whole number", where, meta["lagThreshold"])
		}
		if meta["allowIdleConsumers"] == "true" {
			fail("%s: allowIdleConsumers is true: replicas beyond the partitions sit idle", where)
		}
		if group := r.setting(*consumer, "EVENTQ_GROUP", "--group", ""); group != "" && meta["consumerGroup"] != group {
			fail("%s: consumerGroup %q is not the daemon's group %q", where, meta["consumerGroup"], group)
		}
		if topics := r.setting(*consumer, "EVENTQ_TOPICS", "--topic", ""); topics != "" && !contains(strings.Split(topics, ","), meta["topic"]) {
			fail("%s: topic %q is not one the daemon consumes (%s)", where, meta["topic"], topics)
		}
		policy := meta["offsetResetPolicy"]
		if policy == "" {
			policy = "latest" // KEDA's default
		}
		if reset := r.setting(*consumer, "EVENTQ_AUTO_OFFSET_RESET", "", "earliest"); policy != reset {
			fail("%s: offsetResetPolicy %q differs from the daemon's EVENTQ_AUTO_OFFSET_RESET %q (lag without a commit would be misjudged)", where, policy, reset)
		}
		protocol := r.setting(*consumer, "EVENTQ_SECURITY_PROTOCOL", "", "PLAINTEXT")
		wantSasl := strings.HasPrefix(protocol, "SASL_")
		if hasSasl := meta["sasl"] != "" && meta["sasl"] != "none"; hasSasl != wantSasl {
			fail("%s: sasl %q does not fit the daemon's EVENTQ_SECURITY_PROTOCOL %s", where, meta["sasl"], protocol)
		}
		if wantSasl && trigger["authenticationRef"] == nil {
			fail("%s: SASL without an authenticationRef (KEDA's credentials)", where)
		}
		wantTLS := strings.HasSuffix(protocol, "SSL")
		if hasTLS := meta["tls"] == "enable"; hasTLS != wantTLS {
			fail("%s: tls %q does not fit the daemon's EVENTQ_SECURITY_PROTOCOL %s", where, meta["tls"], protocol)
		}
	}
	if kafka == 0 {
		fail("%s: has no kafka trigger", where)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if strings.TrimSpace(x) == s {
			return true
		}
	}
	return false
}
