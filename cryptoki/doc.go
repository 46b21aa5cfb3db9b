// Package cryptoki will hold the PKCS#11 side of hsmemu: the wire protocol
// between the C module and the daemon, its call table, and the module's
// sources. It holds nothing yet.
package cryptoki
