package main

// Policy checks on a rendered overlay (`kustomize build` output) that a schema cannot
// express: they relate fields of different resources, or arguments to settings.
//
//   - every container (init containers too) runs as non-root with a read-only root
//     filesystem and no privilege escalation, has CPU and memory requests and a memory
//     limit, and an image with a tag that is not "latest";
//   - every Deployment's containers have liveness and readiness probes; for eventq's
//     long-running commands (`consume`, `outbox relay`) they are GET /livez and /readyz on
//     the health port, which listens on 0.0.0.0;
//   - the pod of `eventq consume` gets terminationGracePeriodSeconds of at least
//     EVENTQ_SHUTDOWN_GRACE_S + graceMargin, so Kubernetes never SIGKILLs a daemon that
//     is still finishing its handlers, committing and leaving the group;
//   - a ScaledObject targets a Deployment of the output that has no spec.replicas,
//     maxReplicaCount × EVENTQ_WORKERS ≤ the topic's partitions (annotation
//     eventq/topic-partitions), allowIdleConsumers is not true, and lagThreshold is set;
//   - a PodDisruptionBudget selects the pods of a Deployment of the output;
//   - the ConfigMaps that containers read (envFrom, configMapKeyRef) are in the output;
//   - the migrate Job's name carries the image tag (one Job per release).

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// graceMargin covers what follows the grace period: with --workers the supervisor gives
// each worker EVENTQ_SHUTDOWN_GRACE_S + 10 s before it SIGKILLs it, and the daemon then
// commits, leaves the group and closes its producer (a few seconds).
const graceMargin = 15

const partitionsAnnotation = "eventq/topic-partitions"

var dns1123Subdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

type resource struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name        string            `json:"name"`
		Labels      map[string]string `json:"labels"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata"`
	raw object
}

type container struct {
	Name    string   `json:"name"`
	Image   string   `json:"image"`
	Command []string `json:"command"`
	Args    []string `json:"args"`
	Env     []envVar `json:"env"`
	EnvFrom []struct {
		ConfigMapRef *struct {
			Name string `json:"name"`
		} `json:"configMapRef"`
	} `json:"envFrom"`
	SecurityContext *struct {
		RunAsNonRoot             *bool `json:"runAsNonRoot"`
		RunAsUser                *int  `json:"runAsUser"`
		ReadOnlyRootFilesystem   *bool `json:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool `json:"allowPrivilegeEscalation"`
	} `json:"securityContext"`
	Resources struct {
		Requests map[string]any `json:"requests"`
		Limits   map[string]any `json:"limits"`
	} `json:"resources"`
	LivenessProbe  *probe `json:"livenessProbe"`
	ReadinessProbe *probe `json:"readinessProbe"`
}

type envVar struct {
	Name      string `json:"name"`
	Value     string `json:"value"`
	ValueFrom *struct {
		ConfigMapKeyRef *struct {
			Name string `json:"name"`
			Key  string `json:"key"`
		} `json:"configMapKeyRef"`
	} `json:"valueFrom"`
}

type probe struct {
	HTTPGet *struct {
		Path string `json:"path"`
		Port any    `json:"port"`
	} `json:"httpGet"`
}

type podSpec struct {
	TerminationGracePeriodSeconds *int `json:"terminationGracePeriodSeconds"`
	SecurityContext               *struct {
		RunAsNonRoot *bool `json:"runAsNonRoot"`
	} `json:"securityContext"`
	InitContainers []container `json:"initContainers"`
	Containers     []container `json:"containers"`
}

type workload struct {
	res        resource
	labels     map[string]string
	pod        podSpec
	hasReplica bool
}

type rendered struct {
	resources  []resource
	configMaps map[string]map[string]string
	workloads  []workload
}

func parseRendered(stream string) (*rendered, error) {
	r := &rendered{configMaps: map[string]map[string]string{}}
	for i, text := range splitDocuments(stream) {
		var res resource
		if err := yaml.Unmarshal([]byte(text), &res); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		if err := yaml.Unmarshal([]byte(text), &res.raw); err != nil {
			return nil, fmt.Errorf("document %d: %w", i+1, err)
		}
		r.resources = append(r.resources, res)
		switch res.Kind {
		case "ConfigMap":
			var cm struct {
				Data map[string]string `json:"data"`
			}
			if err := yaml.Unmarshal([]byte(text), &cm); err != nil {
				return nil, err
			}
			r.configMaps[res.Metadata.Name] = cm.Data
		case "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob":
			var w struct {
				Spec struct {
					Replicas    *int        `json:"replicas"`
					Template    podTemplate `json:"template"`
					JobTemplate struct {
						Spec struct {
							Template podTemplate `json:"template"`
						} `json:"spec"`
					} `json:"jobTemplate"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal([]byte(text), &w); err != nil {
				return nil, fmt.Errorf("%s/%s: %w", res.Kind, res.Metadata.Name, err)
			}
			template := w.Spec.Template
			if res.Kind == "CronJob" {
				template = w.Spec.JobTemplate.Spec.Template
			}
			wl := workload{res: res, hasReplica: w.Spec.Replicas != nil, pod: template.Spec,
				labels: template.Metadata.Labels}
			r.workloads = append(r.workloads, wl)
		}
	}
	return r, nil
}

// podTemplate is a workload's pod template (a CronJob's is inside its jobTemplate).
type podTemplate struct {
	Metadata struct {
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec podSpec `json:"spec"`
}

// setting is what an eventq container runs with: its option if given, else its own env,
// else the ConfigMaps it reads, else def.
func (r *rendered) setting(c container, variable, option, def string) string {
	for i, a := range c.Args {
		if option == "" {
			break
		}
		if a == option && i+1 < len(c.Args) {
			return c.Args[i+1]
		}
		if v, ok := strings.CutPrefix(a, option+"="); ok {
			return v
		}
	}
	for _, e := range c.Env {
		if e.Name != variable {
			continue
		}
		if e.ValueFrom != nil && e.ValueFrom.ConfigMapKeyRef != nil {
			return r.configMaps[e.ValueFrom.ConfigMapKeyRef.Name][e.ValueFrom.ConfigMapKeyRef.Key]
		}
		return e.Value
	}
	// Kubernetes: a later envFrom source wins over an earlier one.
	value := def
	for _, from := range c.EnvFrom {
		if from.ConfigMapRef != nil {
			if v, ok := r.configMaps[from.ConfigMapRef.Name][variable]; ok {
				value = v
			}
		}
	}
	return value
}

// eventqCommand is the eventq subcommand a container runs ("consume", "outbox relay",
// "db migrate"), or "" for another program. A leading "tini --" (the image's init, which
// the long-running containers keep as PID 1) is looked through.
func eventqCommand(c container) string {
	argv := append(append([]string{}, c.Command...), c.Args...)
	if len(argv) >= 2 && strings.HasSuffix(argv[0], "tini") && argv[1] == "--" {
		argv = argv[2:]
	}
	if len(argv) == 0 || !strings.HasSuffix(argv[0], "eventq") {
		return ""
	}
	words := []string{}
	for _, a := range argv[1:] {
		if strings.HasPrefix(a, "-") || strings.Contains(a, ":") {
			break
		}
		words = append(words, a)
	}
	return strings.Join(words, " ")
}

func checkPolicy(r *rendered) []string {
	var problems []string
	fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }

	deployments := map[string]workload{}
	for _, w := range r.workloads {
		where := w.res.Kind + "/" + w.res.Metadata.Name
		if w.res.Kind == "Deployment" {
			deployments[w.res.Metadata.Name] = w
		}
		podNonRoot := w.pod.SecurityContext != nil && w.pod.SecurityContext.RunAsNonRoot != nil && *w.pod.SecurityContext.RunAsNonRoot
		all := append(append([]container{}, w.pod.InitContainers...), w.pod.Containers...)
		for _, c := range all {
			at := where + " container " + c.Name
			sc := c.SecurityContext
			nonRoot := podNonRoot
			if sc != nil && sc.RunAsNonRoot != nil {
				nonRoot = *sc.RunAsNonRoot
			}
			if !nonRoot {
				fail("%s: runAsNonRoot is not true", at)
			}
			if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
				fail("%s: readOnlyRootFilesystem is not true", at)
			}
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				fail("%s: allowPrivilegeEscalation is not false", at)
			}
			if sc != nil && sc.RunAsUser != nil && *sc.RunAsUser == 0 {
				fail("%s: runAsUser is 0", at)
			}
			for _, want := range []string{"cpu", "memory"} {
				if _, ok := c.Resources.Requests[want]; !ok {
					fail("%s: no %s request", at, want)
				}
			}
			if _, ok := c.Resources.Limits["memory"]; !ok {
				fail("%s: no memory limit", at)
			}
			if i := strings.LastIndex(c.Image, ":"); i < 0 || strings.Contains(c.Image[i:], "/") || c.Image[i+1:] == "latest" {
				fail("%s: image %q has no release tag", at, c.Image)
			}
			for _, from := range c.EnvFrom {
				if from.ConfigMapRef != nil {
					if _, ok := r.configMaps[from.ConfigMapRef.Name]; !ok {
						fail("%s: reads ConfigMap %s, which is not in the output", at, from.ConfigMapRef.Name)
					}
				}
			}
		}
		for _, c := range w.pod.Containers {
			at := where + " container " + c.Name
			cmd := eventqCommand(c)
			if w.res.Kind == "Deployment" {
				if c.LivenessProbe == nil || c.ReadinessProbe == nil {
					fail("%s: needs a livenessProbe and a readinessProbe", at)
				} else if cmd == "consume" || cmd == "outbox relay" {
					port := r.setting(c, "EVENTQ_HEALTH_PORT", "--health-port", "")
					if port == "" || port == "0" {
						fail("%s: no fixed --health-port/EVENTQ_HEALTH_PORT to probe", at)
					}
					if host := r.setting(c, "EVENTQ_HEALTH_HOST", "", "127.0.0.1"); host != "0.0.0.0" {
						fail("%s: EVENTQ_HEALTH_HOST is %q: the kubelet's probes need 0.0.0.0", at, host)
					}
					for _, p := range []struct {
						name, path string
						probe      *probe
					}{{"livenessProbe", "/livez", c.LivenessProbe}, {"readinessProbe", "/readyz", c.ReadinessProbe}} {
						if p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path {
							fail("%s: %s must GET %s", at, p.name, p.path)
						} else if fmt.Sprint(p.probe.HTTPGet.Port) != port {
							fail("%s: %s probes port %v, the health port is %s", at, p.name, p.probe.HTTPGet.Port, port)
						}
					}
				}
			}
			if cmd == "consume" {
				grace, err := strconv.ParseFloat(r.setting(c, "EVENTQ_SHUTDOWN_GRACE_S", "", "30"), 64)
				if err != nil {
					fail("%s: EVENTQ_SHUTDOWN_GRACE_S is not a number", at)
					continue
				}
				tgps := 30 // Kubernetes' default
				if w.pod.TerminationGracePeriodSeconds != nil {
					tgps = *w.pod.TerminationGracePeriodSeconds
				}
				if float64(tgps) < grace+graceMargin {
					fail("%s: terminationGracePeriodSeconds %d < EVENTQ_SHUTDOWN_GRACE_S %g + %d s margin", at, tgps, grace, graceMargin)
				}
			}
			if cmd == "db migrate" && w.res.Kind == "Job" {
				tag := c.Image[strings.LastIndex(c.Image, ":")+1:]
				name := w.res.Metadata.Name
				if !strings.HasSuffix(name, "-"+tag) {
					fail("%s: the migrate Job's name should end with its image tag (-%s) so each release gets its own Job", at, tag)
				}
				if len(name) > 63 || !dns1123Subdomain.MatchString(name) {
					fail("%s: %q is not a valid Job name (lower-case DNS name of at most 63 characters: it is also a label value)", at, name)
				}
			}
		}
	}

	for _, res := range r.resources {
		where := res.Kind + "/" + res.Metadata.Name
		switch res.Kind {
		case "ScaledObject":
			checkScaledObject(r, res, deployments, fail)
		case "PodDisruptionBudget":
			selector := nestedStrings(res.raw, "spec", "selector", "matchLabels")
			matched := false
			for _, d := range deployments {
				if len(selector) > 0 && subset(selector, d.labels) {
					matched = true
				}
			}
			if !matched {
				fail("%s: selects the pods of no Deployment in the output", where)
			}
		}
	}
	sort.Strings(problems)
	return problems
}

func nestedStrings(o object, path ...string) map[string]string {
	var cur any = o
	for _, p := range path {
		m, ok := cur.(object)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	m, _ := cur.(object)
	out := map[string]string{}
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}

func subset(sub, of map[string]string) bool {
	for k, v := range sub {
		if of[k] != v {
			return false
		}
	}
	return true
}
