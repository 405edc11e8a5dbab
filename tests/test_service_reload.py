"""Reload of the MAF's, BSF's and MEF's service certificates (tracker issue 14 item 2;
m2msec.servers.service_reload, docs/operations.md "Reload").

The MAF end to end: ``m2msec maf serve -c maf.toml`` as a subprocess, SIGHUP after its
certificate files are replaced, and ``openssl s_client`` on Key Retrieval sees the new
certificate; a broken certificate and a restart-only key are refused in the log and the
old certificate stays. The BSF (Zn) and the MEF (target and certificate Enrolee
listeners) at the ``await server.reload()`` level, seen by ``openssl s_client`` too.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from pathlib import Path

import pytest

from m2msec.config.bsf import BsfConfig
from m2msec.maf.store import MafStore
from m2msec.pki.authority import CertificateAuthority, write_credential
from m2msec.servers.bsf import BsfServer
from m2msec.servers.mef import MefServer
from tests import test_mef_server as mef_t
from tests.gateway_process import served_certificate
from tests.interop import free_port, run, spawn, wait_listening, wait_until

pytestmark = pytest.mark.interop

HOST = "127.0.0.1"
DOMAIN = "in.provider.com"
MAF_FQDN = "maf.in.provider.com"
BSF_FQDN = "bsf.in.provider.com"


async def shown(port: int, ca: Path, cert: Path, key: Path, sni: str) -> bytes:
    """The certificate ``openssl s_client`` (with a client certificate) is shown."""
    argv = [
        "openssl", "s_client", "-connect", f"{HOST}:{port}", "-servername", sni,
        "-cert", str(cert), "-key", str(key), "-CAfile", str(ca), "-verify_return_error",
    ]  # fmt: skip
    done = await run(argv, timeout=30)
    assert "Verify return code: 0 (ok)" in done.output, done.output
    return served_certificate(done.output)


def test_restart_only_keys_name_everything_but_the_certificate() -> None:
    from m2msec.config.maf import MafConfig
    from m2msec.servers.service_reload import restart_only_keys

    keys = restart_only_keys(MafConfig(MAF_FQDN), "maf")
    assert {"cert", "key", "ca", "crl", "source"}.isdisjoint(keys)
    assert keys["retrieval_listen"] == "maf.retrieval_listen"
    assert keys["store"] == "maf.store" and keys["fqdn"] == "maf.fqdn"
    assert keys["metrics"] == "metrics.listen"


async def test_maf_serve_reloads_its_certificate_on_sighup(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=DOMAIN)
    maf_key, maf_cert = write_credential(ca.issue_service(MAF_FQDN), tmp_path / "maf")
    cse_key, cse_cert = write_credential(ca.issue("/in-cse"), tmp_path / "cse")
    MafStore(str(tmp_path / "maf.db")).close()
    port = free_port()
    toml = (
        "[maf]\n"
        f'fqdn = "{MAF_FQDN}"\n'
        f'listen = "tls://{HOST}:{free_port()}"\n'
        f'retrieval_listen = "tls://{HOST}:{port}"\n'
        'store = "maf.db"\n'
        f'in_domain = "{DOMAIN}"\n'
        "[certificates]\n"
        'cert = "maf.pem"\nkey = "maf.key"\nca = "ca/ca.pem"\n'
    )
    config = tmp_path / "maf.toml"
    config.write_text(toml)
    assert (tmp_path / "ca" / "ca.pem").is_file() and maf_cert.name == "maf.pem"
    argv = [sys.executable, "-m", "m2msec.cli", "maf", "serve", "-c", str(config)]
    async with spawn(argv) as maf:
        await wait_listening(port, maf, timeout=20)

        async def current() -> bytes:
            return await shown(port, ca.cert_path, cse_cert, cse_key, MAF_FQDN)

        async def hangup(expect: str) -> str:
            before = maf.output.count("MAF server reload")
            assert maf.proc is not None
            maf.proc.send_signal(signal.SIGHUP)
            await wait_until(
                lambda: maf.output.count("MAF server reload") > before, maf.describe, 20
            )
            last = [line for line in maf.output.splitlines() if "MAF server reload" in line][-1]
            assert expect in last, maf.output
            return last

        old_pem = maf_cert.read_bytes()
        assert await current() == old_pem
        write_credential(ca.issue_service(MAF_FQDN), tmp_path / "maf", overwrite=True)
        new_pem = maf_cert.read_bytes()
        assert new_pem != old_pem
        await hangup("MAF server reloaded: ")
        assert await current() == new_pem
        # A broken certificate: refused, logged, the new one stays in force.
        maf_cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
        await hangup("reload refused, the running configuration stays in force: MAF certificate")
        assert await current() == new_pem
        # A key that does not match it: refused by OpenSSL's reason, never the key.
        maf_cert.write_bytes(new_pem)
        write_credential(ca.issue("/other"), tmp_path / "other")
        maf_key_pem = maf_key.read_bytes()
        maf_key.write_bytes((tmp_path / "other.key").read_bytes())
        line = await hangup("reload refused")
        assert "PRIVATE KEY" not in line
        maf_key.write_bytes(maf_key_pem)
        # A restart-only key is named.
        config.write_text(toml.replace('store = "maf.db"', 'store = "other.db"'))
        await hangup("maf.store cannot change while running (needs a restart)")
        assert await current() == new_pem
        assert maf.running


async def test_bsf_reload_swaps_the_zn_certificate(tmp_path: Path) -> None:
    ca = CertificateAuthority.init(tmp_path / "ca", domain=DOMAIN)
    key, cert = write_credential(ca.issue_service(BSF_FQDN), tmp_path / "bsf")
    naf_key, naf_cert = write_credential(ca.issue("/mn-cse-123456"), tmp_path / "naf")
    config = BsfConfig(
        fqdn=BSF_FQDN,
        listen=((HOST, 0),),
        zn_listen=((HOST, 0), (HOST, 0)),
        store=tmp_path / "bsf.db",
        cert=cert,
        key=key,
        ca=ca.cert_path,
    )
    async with BsfServer(config) as bsf:
        ports = [p for _h, p in bsf._zn]
        old_pem = cert.read_bytes()
        new_key, new_cert = write_credential(ca.issue_service(BSF_FQDN), tmp_path / "bsf2")
        bsf.config_source = lambda: dataclasses.replace(config, cert=new_cert, key=new_key)
        outcome = await bsf.reload()
        assert outcome.applied and "2 listener(s)" in outcome.message, outcome.message
        for port in ports:
            assert await shown(port, ca.cert_path, naf_cert, naf_key, BSF_FQDN) == (
                new_cert.read_bytes()
            )
        # A broken one and a restart-only key: refused, the new one stays.
        (tmp_path / "bad.pem").write_text("garbage")
        bsf.config_source = lambda: dataclasses.replace(config, cert=tmp_path / "bad.pem")
        outcome = await bsf.reload()
        assert not outcome.applied and "Zn certificate" in outcome.message
        bsf.config_source = lambda: dataclasses.replace(config, ks_lifetime=5.0)
        outcome = await bsf.reload()
        assert not outcome.applied and "bsf.ks_lifetime" in outcome.message
        assert await shown(ports[0], ca.cert_path, naf_cert, naf_key, BSF_FQDN) != old_pem


async def test_mef_reload_swaps_the_target_and_certificate_enrolee_certificates(
    tmp_path: Path,
) -> None:
    pki = mef_t.make_pki(tmp_path / "pki")
    store = mef_t.seed_store(tmp_path / "mef.db")
    config = mef_t.mef_config(pki, tmp_path)
    async with MefServer(config, store) as mef:
        target = mef.listener("target", "certificate").port
        enrolee = mef.listener("enrolee", "certificate").port
        cse_key, cse_cert = pki.files["/in-cse"]
        new_key, new_cert = write_credential(
            pki.ca.issue_service(mef_t.MEF_FQDN), tmp_path / "mef2"
        )
        mef.config_source = lambda: dataclasses.replace(config, cert=new_cert, key=new_key)
        outcome = await mef.reload()
        assert outcome.applied and "2 listener(s)" in outcome.message, outcome.message
        for port in (target, enrolee):
            got = await shown(port, pki.ca.cert_path, cse_cert, cse_key, mef_t.MEF_FQDN)
            assert got == new_cert.read_bytes()
        mef.config_source = lambda: dataclasses.replace(config, target_listen=f"tls://{HOST}:1")
        outcome = await mef.reload()
        assert not outcome.applied and "mef.target_listen" in outcome.message
    store.close()
