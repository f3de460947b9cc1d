"""`python -m preflight` / `preflight-py`: the C++ CLI's check and verdict for
Python-only environments. Same exit codes: 0 PASS/WARN, 1 FAIL, 2 usage or
invalid request, 3 ERROR, 4 no stored verdict, 5 service unreachable, 6 the
verdict is unsigned, badly signed (--verify-key) or failed the store's
integrity check, 7 the server refused the token or the job id.

Check settings left out take the server's defaults (the report shows what ran:
`--json` has them under "config"); the server validates every setting."""
import argparse
import json
import sys

from google.protobuf import json_format

from preflight._client import PreflightError, check, verdict

EXIT = {"PASS": 0, "WARN": 0, "FAIL": 1, "ERROR": 3}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="preflight-py", description=__doc__)
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="run a check on a server")
    server_help = "HOST:PORT, a list H1:P1,H2:P2 (round-robin) or dns:///NAME:PORT"
    c.add_argument("--server", required=True, help=server_help)
    c.add_argument("--model", required=True,
                   help="model file: a torch.export .pt2 or TorchScript")
    c.add_argument("--batch", required=True, help="torch.save'd batch file")
    server_default = "default: server's"
    c.add_argument("--loss", help=f"built-in loss name or model.loss ({server_default})")
    c.add_argument("--optimizer", help=f"adam, adamw or sgd ({server_default})")
    c.add_argument("--lr", type=float, help=f"learning rate ({server_default})")
    c.add_argument("--weight-decay", type=float, help=server_default)
    c.add_argument("--momentum", type=float, help=f"sgd only ({server_default})")
    c.add_argument("--steps", type=int, help=f"most optimizer steps ({server_default})")
    c.add_argument("--seed", type=int, help=server_default)
    c.add_argument("--device", help=f"auto, cpu, cuda or cuda:N ({server_default})")
    c.add_argument("--timeout", type=float,
                   help=f"wall-clock budget of the check, seconds ({server_default})")
    c.add_argument("--job-id", default="")
    c.add_argument("--json", action="store_true")
    v = sub.add_parser("verdict", help="print a stored verdict (a scheduler gate)")
    v.add_argument("--server", required=True, help=server_help)
    g = v.add_mutually_exclusive_group(required=True)
    g.add_argument("--job-id", default="")
    g.add_argument("--digest", default="")
    v.add_argument("--timeout", type=float, default=10)
    v.add_argument("--json", action="store_true")
    for p in (c, v):
        p.add_argument("--token-file", help="file holding the bearer token (or PREFLIGHT_TOKEN)")
        p.add_argument("--tls", action="store_true", help="TLS with the system's CAs")
        p.add_argument("--tls-ca", help="PEM CA of the server's certificate (or PREFLIGHT_TLS_CA)")
        p.add_argument("--tls-cert", help="client certificate, for mutual TLS")
        p.add_argument("--tls-key", help="its private key")
        p.add_argument("--verify-key", help="Ed25519 public key every verdict must be signed by "
                                            "(or PREFLIGHT_VERIFY_KEY)")
    args = ap.parse_args(argv)
    try:
        token = None
        if args.token_file:
            with open(args.token_file) as f:
                token = f.read().strip()
    except OSError as e:
        print(f"preflight-py {args.command}: --token-file: {e}", file=sys.stderr)
        return 2
    remote = dict(token=token, tls=args.tls, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                  tls_key=args.tls_key, verify_key=args.verify_key)
    try:
        if args.command == "check":
            import torch

            batch = torch.load(args.batch)
            report = check(args.model, batch, server=args.server, loss=args.loss,
                           optimizer=args.optimizer, lr=args.lr,
                           weight_decay=args.weight_decay, momentum=args.momentum,
                           steps=args.steps, seed=args.seed, device=args.device,
                           timeout=args.timeout, job_id=args.job_id, **remote)
        else:
            report = verdict(server=args.server, job_id=args.job_id, digest=args.digest,
                             timeout=args.timeout, **remote)
    except PreflightError as e:
        print(f"preflight-py {args.command}: {e}", file=sys.stderr)
        return {"INVALID_ARGUMENT": 2, "FAILED_PRECONDITION": 2, "NOT_FOUND": 4, "UNTRUSTED": 6,
                "DATA_LOSS": 6, "UNAUTHENTICATED": 7, "PERMISSION_DENIED": 7}.get(e.code, 5)
    except (TypeError, ValueError, OSError) as e:
        print(f"preflight-py {args.command}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(json_format.MessageToDict(report.proto), indent=1))
    else:
        print(report)
    return EXIT.get(report.verdict, 3)


if __name__ == "__main__":
    sys.exit(main())
