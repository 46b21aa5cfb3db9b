package admin

import (
	"context"

	"hsmemu/daemon/adminapi"
	"hsmemu/keystore"
)

// The domain's nodes (keystore/nodes.go): listed in the status, and one
// removed by `hsmemu domain leave`.

func (a *call) nodes(ctx context.Context) ([]adminapi.Node, error) {
	list, err := a.store.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	this := a.store.LocalNode()
	out := make([]adminapi.Node, 0, len(list))
	for _, n := range list {
		if n.Tampered != nil {
			out = append(out, adminapi.Node{ID: n.ID, This: n.ID == this, Tampered: keystore.TamperWhat(n.Tampered)})
			continue
		}
		joined, seen := n.Joined.UTC(), n.LastSeen.UTC()
		out = append(out, adminapi.Node{ID: n.ID, TPM: n.ShortTPM(), TPMName: n.TPMID, Joined: &joined, LastSeen: &seen, This: n.ID == this})
	}
	return out, nil
}

// nodeLeave removes a node. The node this daemon runs on is not removed
// from under it: another node removes it, once it is stopped.
func (a *call) nodeLeave(ctx context.Context, args adminapi.NodeLeave) error {
	if args.Node < 1 {
		return adminapi.Errorf(adminapi.CodeBadRequest, "node %d: node ids start at 1", args.Node)
	}
	if args.Node == a.store.LocalNode() {
		return adminapi.Errorf(adminapi.CodeRefused, "node %d is the node this daemon runs on: stop it, and remove it from another node", args.Node)
	}
	if err := a.store.RemoveNode(ctx, a.who, args.Node); err != nil {
		return err
	}
	a.log.Info("node removed from the domain", "node", args.Node, "by_uid", a.who.UID)
	return nil
}
