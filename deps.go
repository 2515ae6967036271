//go:build deps

// Package main pins module requirements until real code imports them.
package main
import (
 _ "github.com/hashicorp/hcl/v2"
 _ "github.com/hashicorp/hcl/v2/hclsyntax"
 _ "github.com/hashicorp/hcl/v2/hcldec"
 _ "github.com/hashicorp/hcl/v2/gohcl"
 _ "github.com/prometheus/client_golang/prometheus"
 _ "github.com/prometheus/client_golang/prometheus/testutil"
 _ "github.com/prometheus/client_golang/prometheus/promhttp"
 _ "github.com/prometheus/common/expfmt"
 _ "golang.org/x/sync/errgroup"
 _ "go.uber.org/goleak"
 _ "github.com/zclconf/go-cty/cty/function"
 _ "golang.org/x/sys/unix"
)
func main(){}
