// Command checks converts Kubernetes and CRD schemas for kubeconform and checks the
// rendered manifests against eventq's deployment rules (see policy.go). validate.sh
// builds and runs it.
//
//	checks openapi SWAGGER_JSON OUT_DIR   kinds of the Kubernetes OpenAPI v2 document
//	checks crd OUT_DIR CRD_YAML...        kinds of CustomResourceDefinitions
//	checks policy < rendered.yaml         exit 1 listing every violation
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "openapi":
		if len(os.Args) != 4 {
			usage()
		}
		n, err := convertOpenAPI(os.Args[2], os.Args[3])
		exitOn(err)
		fmt.Printf("%d Kubernetes schemas written to %s\n", n, os.Args[3])
	case "crd":
		if len(os.Args) < 4 {
			usage()
		}
		n, err := convertCRDs(os.Args[2], os.Args[3:])
		exitOn(err)
		fmt.Printf("%d CRD schemas written to %s\n", n, os.Args[2])
	case "policy":
		stream, err := io.ReadAll(os.Stdin)
		exitOn(err)
		r, err := parseRendered(string(stream))
		exitOn(err)
		problems := checkPolicy(r)
		for _, p := range problems {
			fmt.Println("policy: " + p)
		}
		if len(problems) > 0 {
			os.Exit(1)
		}
		fmt.Printf("policy: %d resources, no violation\n", len(r.resources))
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: checks openapi SWAGGER_JSON OUT_DIR | crd OUT_DIR CRD_YAML... | policy < rendered.yaml")
	os.Exit(2)
}

func exitOn(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "checks: "+err.Error())
		os.Exit(1)
	}
}
