"""Authenticated, signed, tamper-evident verdicts end to end (issue 15).

A real preflight-server with TLS (a CA and a server certificate made here
with openssl), bearer tokens for two tenants, a reader (a gate) and an
admin, and an Ed25519 signing key; driven by the real thin CLI, the Slurm
task prolog and the Python client:

  - no token / an unknown token -> UNAUTHENTICATED (exit 7), the token never
    echoed; plaintext against the TLS port fails; the verdict needs the CA;
  - tenant B can neither rebind nor read tenant A's job id, by id or digest;
    the reader reads everything and runs nothing;
  - verdicts verify with --verify-key; another key is refused (exit 6);
  - `attest --digest`;
  - a stored FAIL edited to PASS in verdicts.db *with* its row digest
    recomputed (as an attacker who knows the scheme would) passes the
    store's integrity check but is refused by its signature in the CLI, the
    Slurm task prolog and the Python client; one flipped byte without the
    digest updated is DATA_LOSS naming the digest (exit 6) and is reported
    by the server's integrity check at start;
  - mutual TLS: without a client certificate the call fails, with one it works;
  - a server listening beyond loopback without --tokens warns at start.

Usage: integrity_test.py BUILD_DIR ZOO_DIR
"""
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile

from e2e_common import ROOT, Results, Server, Zoo, cli_path, health_check

BUILD, ZOO = os.path.abspath(sys.argv[1]), Zoo(sys.argv[2])
THIN = cli_path(BUILD, thin=True)
R = Results()
expect = R.expect

TOKENS = {"a": "tenant-a-token-0123456789abcdef", "b": "tenant-b-token-0123456789abcdef",
          "gate": "slurm-gate-token-0123456789abcd", "ops": "operator-token-0123456789abcdef"}


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_pki(d):
    """A CA, a server certificate for 127.0.0.1, a client certificate, two
    Ed25519 key pairs (the server's and a stranger's)."""
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=preflight-test-ca", "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt")
    for name, san in (("server", "IP:127.0.0.1,DNS:localhost"), ("client", "DNS:tenant-a"),
                      ("batch-runner", "DNS:batch-runner")):
        with open(f"{d}/{name}.cnf", "w") as f:
            f.write(f"subjectAltName={san}\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout",
                f"{d}/{name}.key", "-out", f"{d}/{name}.csr")
        openssl("x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt", "-CAkey",
                f"{d}/ca.key", "-CAcreateserial", "-days", "1", "-extfile", f"{d}/{name}.cnf",
                "-out", f"{d}/{name}.crt")
    for name in ("signing", "stranger"):
        openssl("genpkey", "-algorithm", "ed25519", "-out", f"{d}/{name}.pem")
        openssl("pkey", "-in", f"{d}/{name}.pem", "-pubout", "-out", f"{d}/{name}.pub.pem")
    for who, token in TOKENS.items():
        with open(f"{d}/{who}.token", "w") as f:
            f.write(token + "\n")
    with open(f"{d}/tokens", "w") as f:
        f.write("# token tenant role [job-id prefixes]\n"
                f"{TOKENS['a']} tenant-a tenant\n"
                f"sha256:{hashlib.sha256(TOKENS['b'].encode()).hexdigest()} tenant-b tenant\n"
                f"{TOKENS['gate']} slurm reader\n"
                f"{TOKENS['ops']} ops admin\n"
                "cert-cn:batch-runner tenant-c tenant\n")
    os.chmod(f"{d}/tokens", 0o600)


def thin(*args, who=None, ca=True, verify=None, d=None):
    extra = []
    if who:
        extra += ["--token-file", f"{d}/{who}.token"]
    if ca:
        extra += ["--tls-ca", f"{d}/ca.crt"]
    if verify:
        extra += ["--verify-key", f"{d}/{verify}.pub.pem"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFLIGHT_")}
    return subprocess.run([THIN, *args, *extra], capture_output=True, text=True, timeout=300,
                          env=env)


def check(d, addr, case, job, who):
    c = ZOO[case]
    return thin("check", "--server", addr, "--model", c["model"], "--batch", c["batch"],
                *c["flags"], "--job-id", job, "--json", who=who, d=d)


def tamper(db, digest, recompute_digest):
    """Edits the stored report of `digest` in the SQLite file: with
    `recompute_digest`, FAIL -> PASS with the findings dropped and the row's
    report_sha256 rewritten to match; without, one byte flipped."""
    sys.path.insert(0, f"{BUILD}/python")
    from preflight.v1 import report_pb2  # noqa: E402  (the build's generated module)

    con = sqlite3.connect(db)
    (blob,) = con.execute("SELECT report FROM verdicts WHERE request_digest = ?",
                          (digest,)).fetchone()
    if recompute_digest:
        r = report_pb2.Report.FromString(blob)
        r.verdict = report_pb2.PASS
        del r.findings[:]
        blob = r.SerializeToString()
        con.execute("UPDATE verdicts SET report = ?, report_sha256 = ? WHERE request_digest = ?",
                    (blob, hashlib.sha256(blob).hexdigest(), digest))
    else:
        blob = blob[:-1] + bytes([blob[-1] ^ 1])
        con.execute("UPDATE verdicts SET report = ? WHERE request_digest = ?", (blob, digest))
    con.commit()
    con.close()


def prolog(d, addr, job, model, verify):
    """The Slurm task prolog, run as slurmd would run it, with its settings file."""
    conf_dir = f"{d}/slurm-{verify}"
    os.makedirs(conf_dir, exist_ok=True)
    script = f"{conf_dir}/preflight_prolog.sh"
    with open(f"{ROOT}/client/gates/slurm/preflight_prolog.sh") as src, open(script, "w") as dst:
        dst.write(src.read())
    os.chmod(script, 0o755)
    with open(f"{conf_dir}/preflight_gate.conf", "w") as f:
        f.write(f"server = {addr}\ncli = {THIN}\ntimeout = 20\n"
                f"token_file = {d}/gate.token\ntls_ca = {d}/ca.crt\n"
                f"verify_key = {d}/{verify}.pub.pem\n")
    env = dict(os.environ, PREFLIGHT_JOB_ID=job, PREFLIGHT_MODEL=model)
    return subprocess.run([script], capture_output=True, text=True, timeout=120, env=env)


def python_verdict(d, addr, job, verify):
    code = ("import preflight, sys\n"
            "try:\n"
            f"    r = preflight.verdict(server={addr!r}, job_id={job!r}, "
            f"token=open({d + '/gate.token'!r}).read().strip(), tls_ca={d + '/ca.crt'!r}, "
            f"verify_key={d + '/' + verify + '.pub.pem'!r})\n"
            "    print('verdict', r.verdict)\n"
            "except preflight.UntrustedVerdict as e:\n"
            "    print('untrusted', e)\n")
    env = dict(os.environ, PYTHONPATH=f"{BUILD}/python")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=env)


def server_flags(d, *extra):
    return ("--tls-cert", f"{d}/server.crt", "--tls-key", f"{d}/server.key", "--tokens",
            f"{d}/tokens", "--signing-key", f"{d}/signing.pem", *extra)


def main():
    d = tempfile.mkdtemp(prefix="preflight-integrity-")
    make_pki(d)
    store = f"{d}/store"
    server = Server(BUILD, store, *server_flags(d))
    addr = server.addr
    try:
        p = check(d, addr, "mlp", "tenant-a/pass", "a")
        expect("tenant A checks its own job id over TLS (PASS, exit 0)", p.returncode == 0,
               p.stderr)
        p = check(d, addr, "loss_flat", "tenant-a/fail", "a")
        expect("tenant A checks a failing model (exit 1)", p.returncode == 1, p.stderr)
        digest_fail = json.loads(p.stdout)["requestDigest"] if p.stdout else ""
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", "--json", who="a", d=d)
        digest_pass = json.loads(p.stdout)["requestDigest"] if p.returncode == 0 else ""
        expect("the response carries a signature and its key id",
               '"reportSignature": "' in p.stdout and '"signingKeyId": "ed25519:' in p.stdout,
               p.stdout[-600:])

        # Authentication.
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", d=d)
        expect("no token -> UNAUTHENTICATED, exit 7",
               p.returncode == 7 and "UNAUTHENTICATED" in p.stderr
               and "no bearer token" in p.stderr, (p.returncode, p.stderr))
        with open(f"{d}/wrong.token", "w") as f:
            f.write("wrong-token-0123456789abcdef-XYZ\n")
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", who="wrong", d=d)
        expect("unknown token -> UNAUTHENTICATED, exit 7, the token not echoed",
               p.returncode == 7 and "not known to this server" in p.stderr
               and "wrong-token" not in p.stderr, (p.returncode, p.stderr))
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", who="a", ca=False,
                 d=d)
        expect("plaintext against the TLS port fails (exit 5)", p.returncode == 5,
               (p.returncode, p.stderr))

        # Tenancy.
        p = check(d, addr, "mlp", "tenant-a/pass", "b")
        expect("tenant B cannot rebind tenant A's job id: PERMISSION_DENIED, exit 7",
               p.returncode == 7 and "PERMISSION_DENIED" in p.stderr
               and "tenant 'tenant-b' may not bind job id 'tenant-a/pass'" in p.stderr,
               (p.returncode, p.stderr))
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", who="b", d=d)
        expect("tenant B cannot read tenant A's job id (exit 7)",
               p.returncode == 7 and "may not read the verdict" in p.stderr,
               (p.returncode, p.stderr))
        p = thin("verdict", "--server", addr, "--digest", digest_pass, who="b", d=d)
        expect("tenant B cannot read it by its digest either (exit 7)",
               p.returncode == 7 and "another tenant" in p.stderr, (p.returncode, p.stderr))
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", who="a", d=d)
        expect("...and tenant A still reads its PASS (exit 0)", p.returncode == 0, p.stderr)
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", who="gate",
                 verify="signing", d=d)
        expect("the reader (a gate) reads it, signature verified (exit 0)",
               p.returncode == 0 and "signature verified: key ed25519:" in p.stdout,
               (p.stdout, p.stderr))
        p = check(d, addr, "mlp", "", "gate")
        expect("the reader cannot run checks (exit 7)",
               p.returncode == 7 and "reader role" in p.stderr, (p.returncode, p.stderr))
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", who="ops",
                 verify="signing", d=d)
        expect("the admin reads every tenant's verdicts (exit 0)", p.returncode == 0, p.stderr)

        # Signatures.
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/pass", who="a",
                 verify="stranger", d=d)
        expect("a verdict checked against another key is refused (exit 6)",
               p.returncode == 6 and "refused: the verdict is signed by key" in p.stderr,
               (p.returncode, p.stderr))

        # attest --digest.
        mlp = ZOO["mlp"]
        p = thin("attest", "--server", addr, "--digest", digest_pass, "--model", mlp["model"],
                 who="a", verify="signing", d=d)
        expect("attest --digest with the checked model (exit 0)",
               p.returncode == 0 and f"request digest {digest_pass}" in p.stdout,
               (p.returncode, p.stdout, p.stderr))
        p = thin("attest", "--server", addr, "--digest", digest_pass, "--model",
                 ZOO["loss_flat"]["model"], who="a", verify="signing", d=d)
        expect("attest --digest with another model is refused (exit 1)",
               p.returncode == 1 and mlp["model"] not in p.stderr and "sha256" in p.stderr,
               (p.returncode, p.stderr))

        # A stored FAIL edited to PASS, its row digest recomputed.
        server.stop()
        tamper(f"{store}/verdicts.db", digest_fail, recompute_digest=True)
        server = Server(BUILD, store, *server_flags(d))
        addr = server.addr
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/fail", who="gate", d=d)
        expect("without --verify-key the edited row reads as PASS (only the signature catches "
               "a consistent edit)", p.returncode == 0, (p.returncode, p.stderr))
        p = thin("verdict", "--server", addr, "--job-id", "tenant-a/fail", who="gate",
                 verify="signing", d=d)
        expect("with --verify-key the edited FAIL->PASS is refused (exit 6)",
               p.returncode == 6 and "altered after it was signed" in p.stderr,
               (p.returncode, p.stderr))
        pr = prolog(d, addr, "tenant-a/fail", ZOO["loss_flat"]["model"], "signing")
        expect("the Slurm task prolog refuses the task on it",
               pr.returncode == 1 and "altered after it was signed" in pr.stdout
               and "task refused" in pr.stdout, (pr.returncode, pr.stdout, pr.stderr))
        pr = prolog(d, addr, "tenant-a/pass", mlp["model"], "signing")
        expect("...and starts the task of the untouched, signed PASS",
               pr.returncode == 0 and "attested" in pr.stdout, (pr.returncode, pr.stdout))
        py = python_verdict(d, addr, "tenant-a/fail", "signing")
        expect("the Python client raises UntrustedVerdict on it",
               py.stdout.startswith("untrusted") and "altered" in py.stdout,
               (py.stdout, py.stderr))
        py = python_verdict(d, addr, "tenant-a/pass", "signing")
        expect("...and verifies the untouched one (Python's serialization signs the same bytes)",
               py.stdout.strip() == "verdict PASS", (py.stdout, py.stderr))

        # One flipped byte, row digest left as it was.
        server.stop()
        tamper(f"{store}/verdicts.db", digest_pass, recompute_digest=False)
        log = f"{d}/server.log"
        with open(log, "w") as err:
            probe = subprocess.Popen(
                [f"{BUILD}/service/preflight-server", "--address", "127.0.0.1:0", "--store",
                 store, "--metrics_address", "", "--health-address", "127.0.0.1:0",
                 *server_flags(d)],
                stdout=subprocess.PIPE, stderr=err, text=True)
            health_line = probe.stdout.readline()
            server_line = probe.stdout.readline()
        port = server_line.split()[-1] if "listening on port" in server_line else ""
        health_port = health_line.split()[-1] if "health on port" in health_line else ""
        try:
            p = thin("verdict", "--server", f"127.0.0.1:{port}", "--job-id", "tenant-a/pass",
                     who="gate", d=d)
            expect("a flipped byte is DATA_LOSS naming the digest (exit 6)",
                   p.returncode == 6 and "DATA_LOSS" in p.stderr and digest_pass in p.stderr
                   and "does not match its recorded sha256" in p.stderr,
                   (p.returncode, p.stderr))
            expect("the plaintext health listener answers SERVING beside the TLS-only port",
                   health_check(f"127.0.0.1:{health_port}") == b"\x08\x01", health_line)
        finally:
            probe.terminate()
            probe.wait(timeout=60)
        with open(log) as f:
            text = f.read()
        expect("the server's integrity check at start names the altered row",
               "WARNING: store integrity: 1 stored report(s) do not match" in text
               and digest_pass in text, text[-1500:])
        expect("the start-up log says TLS, tokens and the signing key",
               "TLS, bearer tokens required, verdicts signed by ed25519:" in text, text[-1500:])

        # Mutual TLS.
        mtls = Server(BUILD, f"{d}/store-mtls", *server_flags(d, "--tls-client-ca", f"{d}/ca.crt"))
        try:
            p = thin("verdict", "--server", mtls.addr, "--job-id", "tenant-a/none", who="a", d=d)
            expect("mutual TLS: no client certificate, no call (exit 5)", p.returncode == 5,
                   (p.returncode, p.stderr))
            p = thin("verdict", "--server", mtls.addr, "--job-id", "tenant-a/none", "--tls-cert",
                     f"{d}/client.crt", "--tls-key", f"{d}/client.key", who="a", d=d)
            expect("mutual TLS: with a client certificate the call arrives (exit 4, none stored)",
                   p.returncode == 4, (p.returncode, p.stderr))
            # A certificate named on a cert-cn: line is its tenant without a token.
            runner = ("--tls-cert", f"{d}/batch-runner.crt", "--tls-key", f"{d}/batch-runner.key")
            c = ZOO["mlp"]
            p = thin("check", "--server", mtls.addr, "--model", c["model"], "--batch", c["batch"],
                     *c["flags"], "--job-id", "tenant-c/by-cert", *runner, d=d)
            expect("mutual TLS: the cert-cn: certificate checks under its tenant's job id "
                   "without a token (exit 0)", p.returncode == 0, (p.returncode, p.stderr[-500:]))
            p = thin("verdict", "--server", mtls.addr, "--job-id", "tenant-c/by-cert", *runner, d=d)
            expect("mutual TLS: and reads it back (exit 0)", p.returncode == 0,
                   (p.returncode, p.stderr[-500:]))
            p = thin("check", "--server", mtls.addr, "--model", c["model"], "--batch", c["batch"],
                     *c["flags"], "--job-id", "tenant-a/by-cert", *runner, d=d)
            expect("mutual TLS: the certificate's tenant may not bind another tenant's job id",
                   p.returncode == 7 and "PERMISSION_DENIED" in p.stderr,
                   (p.returncode, p.stderr[-500:]))
            p = thin("verdict", "--server", mtls.addr, "--job-id", "tenant-c/by-cert", "--tls-cert",
                     f"{d}/client.crt", "--tls-key", f"{d}/client.key", d=d)
            expect("mutual TLS: a certificate not named in the tokens file and no token -> "
                   "UNAUTHENTICATED (exit 7)",
                   p.returncode == 7 and "not named on a cert-cn: line" in p.stderr,
                   (p.returncode, p.stderr[-500:]))
        finally:
            mtls.stop()

        # No auth beyond loopback: a warning at start.
        with open(f"{d}/open.log", "w") as err:
            probe = subprocess.Popen(
                [f"{BUILD}/service/preflight-server", "--address", "0.0.0.0:0", "--store",
                 f"{d}/store-open", "--metrics_address", ""],
                stdout=subprocess.PIPE, stderr=err, text=True)
            probe.stdout.readline()
        probe.terminate()
        probe.wait(timeout=60)
        with open(f"{d}/open.log") as f:
            text = f.read()
        expect("listening on 0.0.0.0 without --tokens warns at start",
               "WARNING: listening on 0.0.0.0:0 without authentication" in text, text[-800:])
    finally:
        if server.alive():
            server.stop()
    return R.finish()


if __name__ == "__main__":
    sys.exit(main())
