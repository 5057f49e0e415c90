package main

// Schema conversion for kubeconform, without its default schema host: the Kubernetes
// OpenAPI v2 document (api/openapi-spec/swagger.json of the k8s.io/kubernetes Go module)
// and CustomResourceDefinitions (the KEDA Go module's config/crd/bases) become
// kubeconform's "standalone-strict" layout, one file per kind and version.
//
// It does what kubeconform's scripts/openapi2jsonschema.py does, in Go so that the
// validation needs nothing but the Go toolchain:
//   - strict: an object schema with properties and no additionalProperties gets
//     additionalProperties: false (unknown fields fail), unless the CRD says
//     x-kubernetes-preserve-unknown-fields;
//   - int-or-string and Quantity accept a string or a number, as the API server does;
//   - optional fields of a simple type accept null (as in kubeconform's own schemas);
//   - standalone: every definition a kind uses is copied into the file's own
//     "definitions" (so recursive types need no inlining).

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

type object = map[string]any

// kindFile is kubeconform's file name for a kind: registry.schemaPath's
// {{ .ResourceKind }}{{ .KindSuffix }}.json ("deployment-apps-v1.json", "configmap-v1.json",
// "scaledobject-keda-v1alpha1.json").
func kindFile(group, version, kind string) string {
	suffix := "-" + strings.ToLower(version)
	if group != "" {
		suffix = "-" + strings.ToLower(strings.Split(group, ".")[0]) + suffix
	}
	return strings.ToLower(kind) + suffix + ".json"
}

// convertOpenAPI writes one schema per group/version/kind of swagger.json into outDir.
func convertOpenAPI(swaggerPath, outDir string) (int, error) {
	raw, err := os.ReadFile(swaggerPath)
	if err != nil {
		return 0, err
	}
	var doc struct {
		Definitions map[string]object `json:"definitions"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		return 0, fmt.Errorf("%s: %w", swaggerPath, err)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return 0, err
	}
	names := make([]string, 0, len(doc.Definitions))
	for name := range doc.Definitions {
		names = append(names, name)
	}
	sort.Strings(names)
	written := map[string]bool{}
	for _, name := range names {
		def := doc.Definitions[name]
		gvks, _ := def["x-kubernetes-group-version-kind"].([]any)
		// Types shared by every group (DeleteOptions, WatchEvent) are not resources.
		if len(gvks) != 1 {
			continue
		}
		gvk, _ := gvks[0].(object)
		group, _ := gvk["group"].(string)
		version, _ := gvk["version"].(string)
		kind, _ := gvk["kind"].(string)
		file := kindFile(group, version, kind)
		if written[file] {
			continue
		}
		schema := deepCopy(def).(object)
		defs := object{}
		collectRefs(schema, doc.Definitions, defs)
		if len(defs) > 0 {
			schema["definitions"] = defs
		}
		schema = prepare(schema, false).(object)
		if err := writeJSON(filepath.Join(outDir, file), schema); err != nil {
			return 0, err
		}
		written[file] = true
	}
	return len(written), nil
}

// collectRefs copies into defs every definition that node refers to, transitively.
func collectRefs(node any, all map[string]object, defs object) {
	switch n := node.(type) {
	case object:
		if ref, ok := n["$ref"].(string); ok {
			name := strings.TrimPrefix(ref, "#/definitions/")
			if _, seen := defs[name]; !seen {
				target, ok := all[name]
				if !ok {
					panic("unresolved reference " + ref)
				}
				copied := deepCopy(target)
				defs[name] = copied
				collectRefs(copied, all, defs)
			}
		}
		for _, v := range n {
			collectRefs(v, all, defs)
		}
	case []any:
		for _, v := range n {
			collectRefs(v, all, defs)
		}
	}
}

// convertCRDs writes one schema per served version of each CustomResourceDefinition.
func convertCRDs(outDir string, crdPaths []string) (int, error) {
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return 0, err
	}
	count := 0
	for _, path := range crdPaths {
		raw, err := os.ReadFile(path)
		if err != nil {
			return 0, err
		}
		for _, docText := range splitDocuments(string(raw)) {
			var crd struct {
				Kind string `json:"kind"`
				Spec struct {
					Group string `json:"group"`
					Names struct {
						Kind string `json:"kind"`
					} `json:"names"`
					Versions []struct {
						Name   string `json:"name"`
						Schema struct {
							OpenAPIV3Schema object `json:"openAPIV3Schema"`
						} `json:"schema"`
					} `json:"versions"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal([]byte(docText), &crd); err != nil {
				return 0, fmt.Errorf("%s: %w", path, err)
			}
			if crd.Kind != "CustomResourceDefinition" {
				continue
			}
			for _, v := range crd.Spec.Versions {
				if v.Schema.OpenAPIV3Schema == nil {
					continue
				}
				schema := prepare(v.Schema.OpenAPIV3Schema, true).(object)
				file := kindFile(crd.Spec.Group, v.Name, crd.Spec.Names.Kind)
				if err := writeJSON(filepath.Join(outDir, file), schema); err != nil {
					return 0, err
				}
				count++
			}
		}
	}
	return count, nil
}

// prepare applies the strict, int-or-string, Quantity and null rules to a schema tree.
func prepare(node any, crd bool) any {
	switch n := node.(type) {
	case object:
		delete(n, "description")
		if n["format"] == "int-or-string" || n["x-kubernetes-int-or-string"] == true {
			return object{"oneOf": []any{object{"type": "string"}, object{"type": "integer"}}}
		}
		if props, ok := n["properties"].(object); ok {
			_, hasAdditional := n["additionalProperties"]
			if !hasAdditional && n["x-kubernetes-preserve-unknown-fields"] != true {
				n["additionalProperties"] = false
			}
			required := map[string]bool{}
			if req, ok := n["required"].([]any); ok {
				for _, r := range req {
					if s, ok := r.(string); ok {
						required[s] = true
					}
				}
			}
			for name, prop := range props {
				p := prepare(prop, crd)
				if !required[name] {
					p = allowNull(p)
				}
				props[name] = p
			}
		}
		for key, v := range n {
			if key == "properties" {
				continue
			}
			if key == "definitions" {
				defs := v.(object)
				for name, d := range defs {
					if name == "io.k8s.apimachinery.pkg.api.resource.Quantity" {
						defs[name] = object{"oneOf": []any{object{"type": "string"}, object{"type": "number"}}}
						continue
					}
					defs[name] = prepare(d, crd)
				}
				continue
			}
			n[key] = prepare(v, crd)
		}
		return n
	case []any:
		for i, v := range n {
			n[i] = prepare(v, crd)
		}
		return n
	}
	return node
}

// allowNull lets an optional field be null, as the API server does.
func allowNull(node any) any {
	n, ok := node.(object)
	if !ok {
		return node
	}
	if t, ok := n["type"].(string); ok && t != "null" {
		n["type"] = []any{t, "null"}
		return n
	}
	return n
}

func deepCopy(v any) any {
	switch n := v.(type) {
	case object:
		c := make(object, len(n))
		for k, x := range n {
			c[k] = deepCopy(x)
		}
		return c
	case []any:
		c := make([]any, len(n))
		for i, x := range n {
			c[i] = deepCopy(x)
		}
		return c
	}
	return v
}

func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return os.WriteFile(path, data, 0o644)
}

// splitDocuments splits a YAML stream on its "---" lines (kustomize's and controller-gen's
// output put each on a line of its own).
func splitDocuments(stream string) []string {
	var docs []string
	var current []string
	flush := func() {
		text := strings.TrimSpace(strings.Join(current, "\n"))
		if text != "" {
			docs = append(docs, text)
		}
		current = nil
	}
	for _, line := range strings.Split(stream, "\n") {
		if strings.TrimRight(line, " \r") == "---" {
			flush()
			continue
		}
		current = append(current, line)
	}
	flush()
	return docs
}
