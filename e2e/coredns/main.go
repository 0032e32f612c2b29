// CoreDNS for the e2e node's cluster DNS (e2e/node.sh): upstream's main (coredns.go) with only
// the plugins that Corefile uses linked in, instead of core/plugin's every one. No `forward`: the
// node answers for the cluster's zones and nothing else (no name server outside the test's
// network namespace may be asked). Built by e2e/build-coredns.sh.
package main

import (
	_ "github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func main() {
	coremain.Run()
}
