"""The information flows of seed 003 tables 23-44 (m2msec.sa.flows), table by table.

For every flow: exactly the service elements of its table, each mandatory one required
(None, empty or missing -> ValueError), each conditional one present exactly when its note
says, the table's own values (Success/Failure for 23-35, Accepted/Rejected for 36-44), the
Cause of rejection only where and as the table lists it, and check_reply_to pairing
requests with confirms.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from m2msec.sa import flows as f
from m2msec.sa.flows import (
    Acceptance,
    AuthorizationCode,
    CauseOfRejection,
    KeyingMaterial,
    KeyingMaterialKind,
    KeyUpdateRejection,
    RemoveRejection,
    Result,
    SignatureKind,
    UpdatedOperation,
    UpdateOperation,
    check_reply_to,
)
from m2msec.sa.records import SaId

SA = SaId(bytes.fromhex("00112233445566778899aabbccddeeff"))
SA2 = SaId(bytes.fromhex("ffeeddccbbaa99887766554433221100"))
INITIATOR = f.SessionCredentials(
    entity_id="Clight-AE1",
    framework="provisioned-psk",
    key_id="AE123456789012-Light@in.provider.com",
)
RESPONDER = f.ResponderAuthorizationCredentials(
    entity_id="/mn-cse-123456", framework="provisioned-psk"
)
PARAMS = f.SaParameters(
    framework="provisioned-psk", protocol="TLSv1.2", cipher_suite="PSK-AES128-CCM8"
)
OTHER_PARAMS = f.SaParameters(
    framework="provisioned-psk", protocol="TLSv1.2", cipher_suite="PSK-AES128-CBC-SHA256"
)
CODE = AuthorizationCode(kind=SignatureKind.PUBLIC_KEY, signature=b"\x30\x45sig")
MATERIAL = KeyingMaterial(kind=KeyingMaterialKind.ENCRYPTION_KEY, value=b"\x01" * 16)

# class -> (a minimal valid set of elements, the mandatory elements, every element)
SPEC: dict[type[f.Flow], tuple[dict[str, Any], set[str], set[str]]] = {
    f.InitiateSa: (
        {"initiator_id": INITIATOR, "responder_id": RESPONDER},
        {"initiator_id", "responder_id"},
        {"initiator_id", "responder_id"},
    ),
    f.InitiateSaConfirm: (
        {"result": Result.SUCCESS, "security_association": PARAMS},
        {"result"},
        {"result", "security_association", "cause"},
    ),
    f.InitiateSaReceived: (
        {"initiator_id": INITIATOR, "sa_id": SA},
        {"initiator_id", "sa_id"},
        {"initiator_id", "sa_id"},
    ),
    f.InitiateSaReceivedConfirm: (
        {"sa_id": SA, "result": Result.SUCCESS},
        {"sa_id", "result"},
        {"sa_id", "result", "cause"},
    ),
    f.SaParameterEstablishment: (
        {"possible_security_associations": (PARAMS, OTHER_PARAMS)},
        {"possible_security_associations"},
        {"possible_security_associations"},
    ),
    f.SaParameterEstablishmentConfirm: (
        {"result": Result.SUCCESS, "security_association": PARAMS, "sa_id": SA},
        {"result"},
        {"result", "security_association", "sa_id", "cause"},
    ),
    f.SendResponderKey: (
        {"sa_id": SA, "key_authorization_ticket": b"ticket", "encryption_key": b"spki"},
        {"sa_id", "key_authorization_ticket"},
        {"sa_id", "encryption_key", "encryption_key_reference", "key_authorization_ticket"},
    ),
    f.InitiatorKeyingMaterial: (
        {"sa_id": SA, "initiator_keying_material": b"enc"},
        {"sa_id", "initiator_keying_material"},
        {"sa_id", "initiator_keying_material"},
    ),
    f.InitiatorKeyingMaterialConfirm: (
        {"sa_id": SA, "response": b"hash"},
        {"sa_id", "response"},
        {"sa_id", "response"},
    ),
    f.SendInitiatorKey: (
        {"sa_id": SA, "key_authorization_ticket": b"ticket", "encryption_key_reference": "ref"},
        {"sa_id", "key_authorization_ticket"},
        {"sa_id", "encryption_key", "encryption_key_reference", "key_authorization_ticket"},
    ),
    f.ResponderKeyingMaterial: (
        {"sa_id": SA, "responder_keying_material": b"enc"},
        {"sa_id", "responder_keying_material"},
        {"sa_id", "responder_keying_material"},
    ),
    f.ResponderKeyingMaterialConfirm: (
        {"sa_id": SA, "response": b"hash"},
        {"sa_id", "response"},
        {"sa_id", "response"},
    ),
    f.SendResponderAuthorizationContext: (
        {"sa_id": SA, "authorization_ticket": b"ticket"},
        {"sa_id", "authorization_ticket"},
        {
            "sa_id",
            "authorization_ticket",
            "explicit_context_description",
            "context_description_reference",
        },
    ),
    f.SendResponderAuthorizationKey: (
        {"sa_id": SA, "authorization_ticket": b"ticket"},
        {"sa_id"},
        {
            "sa_id",
            "encryption_key",
            "encryption_key_reference",
            "authorization_ticket",
            "authorization_ticket_reference",
            "authorization_code",
        },
    ),
    f.ResponderAuthorizationChallenge: (
        {"sa_id": SA, "encryption_challenge": b"c"},
        {"sa_id"},
        {"sa_id", "encryption_challenge", "authentication_challenge"},
    ),
    f.ResponderAuthorizationChallengeConfirm: (
        {"sa_id": SA, "response": b"r"},
        {"sa_id"},
        {"sa_id", "response", "authorization_ticket", "authorization_code"},
    ),
    f.SendInitiatorAuthorizationKey: (
        {"sa_id": SA, "authorization_ticket_reference": "ref"},
        {"sa_id"},
        {
            "sa_id",
            "encryption_key",
            "encryption_key_reference",
            "authorization_ticket",
            "authorization_ticket_reference",
            "authorization_code",
        },
    ),
    f.InitiatorAuthorizationChallenge: (
        {"sa_id": SA, "authentication_challenge": b"c"},
        {"sa_id"},
        {"sa_id", "encryption_challenge", "authentication_challenge"},
    ),
    f.InitiatorAuthorizationChallengeConfirm: (
        {"sa_id": SA, "authorization_ticket": b"t", "authorization_code": CODE},
        {"sa_id"},
        {"sa_id", "response", "authorization_ticket", "authorization_code"},
    ),
    f.SaEstablishmentComplete: (
        {"sa_id": SA, "establishment_result": Result.SUCCESS},
        {"sa_id", "establishment_result"},
        {"sa_id", "establishment_result", "failure_cause"},
    ),
    f.UpdateSa: (
        {"existing_sa_id": SA, "update_operation": UpdateOperation.UPDATE_SA_KEYS},
        {"existing_sa_id", "update_operation"},
        {"existing_sa_id", "update_operation"},
    ),
    f.UpdateSaConfirm: (
        {"existing_sa_id": SA, "result": Acceptance.ACCEPTED},
        {"existing_sa_id", "result"},
        {"existing_sa_id", "new_sa_id", "result"},
    ),
    f.SaIdentifierUpdate: (
        {"existing_sa_id": SA, "new_sa_id": SA2},
        {"existing_sa_id", "new_sa_id"},
        {"existing_sa_id", "new_sa_id"},
    ),
    f.SaIdentifierUpdateConfirm: (
        {"new_sa_id": SA2, "result": Acceptance.ACCEPTED},
        {"new_sa_id", "result"},
        {"existing_sa_id", "new_sa_id", "result"},
    ),
    f.SaIdentifierUpdateResponse: (
        {"existing_sa_id": SA, "new_sa_id": SA2, "result": Acceptance.ACCEPTED},
        {"new_sa_id", "result"},
        {"existing_sa_id", "new_sa_id", "result"},
    ),
    f.SaKeyUpdate: (
        {"sa_id": SA, "new_keying_material": MATERIAL},
        {"sa_id", "new_keying_material"},
        {"sa_id", "new_keying_material", "responder_keying_material_requested"},
    ),
    f.SaKeyUpdateConfirm: (
        {"sa_id": SA, "result": Acceptance.ACCEPTED},
        {"sa_id", "result"},
        {"sa_id", "responder_keying_material", "result", "rejection_reason"},
    ),
    f.SaKeyUpdateResponse: (
        {"sa_id": SA, "result": Acceptance.ACCEPTED},
        {"sa_id", "result"},
        {"sa_id", "result", "rejection_reason"},
    ),
    f.SaUpdated: (
        {"existing_sa_id": SA, "update_operation": UpdatedOperation.SA_KEYS_UPDATED},
        {"existing_sa_id", "update_operation"},
        {"existing_sa_id", "update_operation", "new_sa_id"},
    ),
    f.RemoveSa: ({"sa_id": SA}, {"sa_id"}, {"sa_id"}),
    f.RemoveSaConfirm: (
        {"sa_id": SA, "result": Acceptance.ACCEPTED},
        {"sa_id", "result"},
        {"sa_id", "result", "rejection_reason"},
    ),
    f.SaRemoval: ({"sa_id": SA}, {"sa_id"}, {"sa_id"}),
    f.SaRemovalConfirm: (
        {"sa_id": SA, "result": Acceptance.ACCEPTED},
        {"sa_id", "result"},
        {"sa_id", "result", "rejection_reason"},
    ),
    f.SaRemoved: ({"sa_id": SA}, {"sa_id"}, {"sa_id"}),
}

ALL = sorted(SPEC, key=lambda c: (c.TABLE, c.PART != "request", c.__name__))


def _ids(cls: type[f.Flow]) -> str:
    return f"{cls.TABLE}-{cls.__name__}"


def test_every_table_23_to_44_has_its_flows() -> None:
    assert list(f.FLOWS_BY_TABLE) == list(range(23, 45))
    listed = {cls for classes in f.FLOWS_BY_TABLE.values() for cls in classes}
    assert listed == set(SPEC)
    for table, classes in f.FLOWS_BY_TABLE.items():
        assert all(table == cls.TABLE for cls in classes)
    # Confirmed flows have a request and a confirm; the others are one flow.
    for request, confirm in f.CONFIRM_OF.items():
        assert (request.PART, confirm.PART) == ("request", "confirm")
        assert request.TABLE == confirm.TABLE and request.NAME == confirm.NAME
        assert (request.SOURCE, request.DESTINATION) == (confirm.DESTINATION, confirm.SOURCE)
    assert {len(c) for c in f.FLOWS_BY_TABLE.values()} == {1, 2}


@pytest.mark.parametrize("cls", ALL, ids=_ids)
def test_docstring_cites_seed_003_and_its_table(cls: type[f.Flow]) -> None:
    assert f"seed 003, table {cls.TABLE}" in (cls.__doc__ or "")
    assert "7.3" not in (cls.__doc__ or "").replace("TS-0003 7.3", "!")  # never V3.18's 7.3


@pytest.mark.parametrize("cls", ALL, ids=_ids)
def test_exactly_the_elements_of_the_table(cls: type[f.Flow]) -> None:
    minimal, _, every = SPEC[cls]
    assert {fld.name for fld in dataclasses.fields(cls)} == every  # type: ignore[arg-type]
    flow = cls(**minimal)
    assert dataclasses.is_dataclass(flow)
    name = next(iter(minimal))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(flow, name, minimal[name])


@pytest.mark.parametrize("cls", ALL, ids=_ids)
def test_mandatory_elements_are_required(cls: type[f.Flow]) -> None:
    minimal, mandatory, every = SPEC[cls]
    assert cls.from_elements(minimal) == cls(**minimal)
    for name in mandatory:
        rest = {k: v for k, v in minimal.items() if k != name}
        with pytest.raises(ValueError, match=f"mandatory element {name} is missing"):
            cls.from_elements(rest)
        with pytest.raises(ValueError):
            cls(**{**rest, name: None})
        with pytest.raises(TypeError):  # an omitted keyword, as Python says it
            cls(**rest)
    for name in every - mandatory:  # the optional ones have defaults
        field = next(x for x in dataclasses.fields(cls) if x.name == name)  # type: ignore[arg-type]
        assert field.default is not dataclasses.MISSING
    with pytest.raises(ValueError, match="no element"):
        cls.from_elements({**minimal, "cause_of_everything": "x"})


@pytest.mark.parametrize("cls", [c for c in ALL if "sa_id" in SPEC[c][1]], ids=_ids)
def test_sa_identifiers_are_octet_strings(cls: type[f.Flow]) -> None:
    minimal = SPEC[cls][0]
    flow = cls(**{**minimal, "sa_id": bytes(SA)})
    assert isinstance(flow.sa_id, SaId) and flow.sa_id == SA  # type: ignore[attr-defined]
    for bad in (b"", "00112233", 42):
        with pytest.raises(ValueError, match=r"octet string|missing"):
            cls(**{**minimal, "sa_id": bad})


def test_results_are_the_tables_own_values() -> None:
    success_failure = [c for c in ALL if c.TABLE <= 35 and "result" in SPEC[c][2]]
    accepted_rejected = [c for c in ALL if c.TABLE >= 36 and "result" in SPEC[c][2]]
    assert {c.TABLE for c in success_failure} == {23, 24, 25}
    assert {c.TABLE for c in accepted_rejected} == {36, 37, 38, 39, 40, 42, 43}
    for cls in success_failure:
        with pytest.raises(ValueError, match="not a value"):
            cls(**{**SPEC[cls][0], "result": "Accepted"})
    for cls in accepted_rejected:
        with pytest.raises(ValueError, match="not a value"):
            cls(**{**SPEC[cls][0], "result": "Success"})
    # Strings of the table's own values are taken and typed.
    confirm = f.RemoveSaConfirm(sa_id=SA, result="Accepted")  # type: ignore[arg-type]
    assert confirm.result is Acceptance.ACCEPTED
    complete = f.SaEstablishmentComplete(sa_id=SA, establishment_result="Success")  # type: ignore[arg-type]
    assert complete.establishment_result is Result.SUCCESS
    assert [r.value for r in Result] == ["Success", "Failure"]
    assert [r.value for r in Acceptance] == ["Accepted", "Rejected"]


def test_cause_of_rejection_only_where_and_as_the_table_lists_it() -> None:
    assert [c.value for c in CauseOfRejection] == [
        "No parameters in common with Responder",
        "Administrative reasons",
    ]
    with_cause = {c.TABLE for c in ALL if "cause" in SPEC[c][2]}
    assert with_cause == {23, 24, 25}
    # Table 23: both values.
    for cause in CauseOfRejection:
        assert f.InitiateSaConfirm(result=Result.FAILURE, cause=cause).cause is cause
    # Table 24: administrative reasons only.
    f.InitiateSaReceivedConfirm(
        sa_id=SA, result=Result.FAILURE, cause=CauseOfRejection.ADMINISTRATIVE_REASONS
    )
    with pytest.raises(ValueError, match="not allowed in this table"):
        f.InitiateSaReceivedConfirm(
            sa_id=SA, result=Result.FAILURE, cause=CauseOfRejection.NO_PARAMETERS_IN_COMMON
        )
    # Table 25: no parameters in common only.
    f.SaParameterEstablishmentConfirm(
        result=Result.FAILURE, cause=CauseOfRejection.NO_PARAMETERS_IN_COMMON
    )
    with pytest.raises(ValueError, match="not allowed in this table"):
        f.SaParameterEstablishmentConfirm(
            result=Result.FAILURE, cause=CauseOfRejection.ADMINISTRATIVE_REASONS
        )


def test_remove_has_no_cause_element() -> None:
    for cls in f.FLOWS_BY_TABLE[42] + f.FLOWS_BY_TABLE[43] + f.FLOWS_BY_TABLE[44]:
        names = {x.name for x in dataclasses.fields(cls)}  # type: ignore[arg-type]
        assert not any("cause" in n for n in names)
    assert [r.value for r in RemoveRejection] == [
        "Unknown SA Identifier",
        "SA Identifier already marked invalid",
    ]
    with pytest.raises(TypeError):
        f.SaRemoved(sa_id=SA, cause="x")  # type: ignore[call-arg]


# -- the notes, table by table -----------------------------------------------------------
def test_table_23_sa_on_success_cause_on_failure() -> None:
    f.InitiateSaConfirm(result=Result.SUCCESS, security_association=PARAMS)
    with pytest.raises(ValueError, match="security_association is required"):
        f.InitiateSaConfirm(result=Result.SUCCESS)
    with pytest.raises(ValueError, match="cause must be absent"):
        f.InitiateSaConfirm(
            result=Result.SUCCESS,
            security_association=PARAMS,
            cause=CauseOfRejection.ADMINISTRATIVE_REASONS,
        )
    with pytest.raises(ValueError, match="cause is required"):
        f.InitiateSaConfirm(result=Result.FAILURE)
    with pytest.raises(ValueError, match="security_association must be absent"):
        f.InitiateSaConfirm(
            result=Result.FAILURE,
            security_association=PARAMS,
            cause=CauseOfRejection.NO_PARAMETERS_IN_COMMON,
        )


def test_table_24_cause_exactly_on_failure() -> None:
    with pytest.raises(ValueError, match="cause is required"):
        f.InitiateSaReceivedConfirm(sa_id=SA, result=Result.FAILURE)
    with pytest.raises(ValueError, match="cause must be absent"):
        f.InitiateSaReceivedConfirm(
            sa_id=SA, result=Result.SUCCESS, cause=CauseOfRejection.ADMINISTRATIVE_REASONS
        )


def test_table_25_sa_and_identifier_on_success() -> None:
    with pytest.raises(ValueError, match="sa_id is required"):
        f.SaParameterEstablishmentConfirm(result=Result.SUCCESS, security_association=PARAMS)
    with pytest.raises(ValueError, match="must be absent"):
        f.SaParameterEstablishmentConfirm(
            result=Result.FAILURE, sa_id=SA, cause=CauseOfRejection.NO_PARAMETERS_IN_COMMON
        )
    with pytest.raises(ValueError, match="mandatory"):
        f.SaParameterEstablishment(possible_security_associations=())


@pytest.mark.parametrize("cls", [f.SendResponderKey, f.SendInitiatorKey], ids=_ids)
def test_tables_26_28_a_key_or_its_reference(cls: type[f.Flow]) -> None:
    with pytest.raises(ValueError, match="note 1"):
        cls(sa_id=SA, key_authorization_ticket=b"t")
    both = cls(
        sa_id=SA, key_authorization_ticket=b"t", encryption_key=b"k", encryption_key_reference="r"
    )
    assert set(both.elements()) == {
        "sa_id",
        "key_authorization_ticket",
        "encryption_key",
        "encryption_key_reference",
    }


@pytest.mark.parametrize(
    "cls", [f.SendResponderAuthorizationKey, f.SendInitiatorAuthorizationKey], ids=_ids
)
def test_tables_31_33_a_ticket_or_its_reference(cls: type[f.Flow]) -> None:
    with pytest.raises(ValueError, match="note 2"):
        cls(sa_id=SA, encryption_key=b"k", authorization_code=CODE)
    cls(sa_id=SA, authorization_ticket_reference="https://ticket", authorization_code=CODE)


@pytest.mark.parametrize(
    ("request_cls", "confirm_cls"),
    [
        (f.ResponderAuthorizationChallenge, f.ResponderAuthorizationChallengeConfirm),
        (f.InitiatorAuthorizationChallenge, f.InitiatorAuthorizationChallengeConfirm),
    ],
)
def test_tables_32_34_challenges_and_their_answers(
    request_cls: type[f.Flow], confirm_cls: type[f.Flow]
) -> None:
    with pytest.raises(ValueError, match="note 1"):
        request_cls(sa_id=SA)
    encryption = request_cls(sa_id=SA, encryption_challenge=b"e")
    authentication = request_cls(sa_id=SA, authentication_challenge=b"a")
    both = request_cls(sa_id=SA, encryption_challenge=b"e", authentication_challenge=b"a")
    response = confirm_cls(sa_id=SA, response=b"r")
    ticket = confirm_cls(sa_id=SA, authorization_ticket=b"t", authorization_code=CODE)
    full = confirm_cls(sa_id=SA, response=b"r", authorization_ticket=b"t", authorization_code=CODE)
    # Note 3: the ticket and the code answer one challenge together.
    with pytest.raises(ValueError, match="note 3"):
        confirm_cls(sa_id=SA, authorization_ticket=b"t")
    with pytest.raises(ValueError, match="note 3"):
        confirm_cls(sa_id=SA, response=b"r", authorization_code=CODE)
    check_reply_to(encryption, response)
    check_reply_to(authentication, ticket)
    check_reply_to(both, full)
    with pytest.raises(ValueError, match="note 2"):
        check_reply_to(encryption, ticket)  # the Response is mandatory
    with pytest.raises(ValueError, match="response must be absent: note 2"):
        check_reply_to(authentication, full)  # a Response to no encryption challenge
    with pytest.raises(ValueError, match="note 3"):
        check_reply_to(both, response)


def test_table_35_failure_cause_exactly_on_failure() -> None:
    f.SaEstablishmentComplete(
        sa_id=SA,
        establishment_result=Result.FAILURE,
        failure_cause=f.FailureCause.UNABLE_TO_MATCH_SECURITY_PARAMETERS,
    )
    with pytest.raises(ValueError, match="failure_cause is required"):
        f.SaEstablishmentComplete(sa_id=SA, establishment_result=Result.FAILURE)
    with pytest.raises(ValueError, match="failure_cause must be absent"):
        f.SaEstablishmentComplete(
            sa_id=SA,
            establishment_result=Result.SUCCESS,
            failure_cause=f.FailureCause.UNABLE_TO_MATCH_SECURITY_PARAMETERS,
        )


@pytest.mark.parametrize("operation", list(UpdateOperation))
def test_table_36_new_identifier_when_accepted_and_the_identifier_changes(
    operation: UpdateOperation,
) -> None:
    request = f.UpdateSa(existing_sa_id=SA, update_operation=operation)
    with_new = f.UpdateSaConfirm(existing_sa_id=SA, result=Acceptance.ACCEPTED, new_sa_id=SA2)
    without = f.UpdateSaConfirm(existing_sa_id=SA, result=Acceptance.ACCEPTED)
    if operation is UpdateOperation.UPDATE_SA_KEYS:
        check_reply_to(request, without)
        with pytest.raises(ValueError, match="new_sa_id must be absent"):
            check_reply_to(request, with_new)
    else:
        check_reply_to(request, with_new)
        with pytest.raises(ValueError, match="new_sa_id is required"):
            check_reply_to(request, without)
    check_reply_to(request, f.UpdateSaConfirm(existing_sa_id=SA, result=Acceptance.REJECTED))
    with pytest.raises(ValueError, match="only when Accepted"):
        f.UpdateSaConfirm(existing_sa_id=SA, result=Acceptance.REJECTED, new_sa_id=SA2)


def test_table_37_identifier_update() -> None:
    request = f.SaIdentifierUpdate(existing_sa_id=SA, new_sa_id=SA2)
    check_reply_to(request, f.SaIdentifierUpdateConfirm(new_sa_id=SA2, result=Acceptance.ACCEPTED))
    other = SaId(b"\x42" * 16)
    check_reply_to(
        request,
        f.SaIdentifierUpdateConfirm(existing_sa_id=SA, new_sa_id=other, result=Acceptance.REJECTED),
    )
    with pytest.raises(ValueError, match="note 1"):
        f.SaIdentifierUpdateConfirm(new_sa_id=other, result=Acceptance.REJECTED)
    with pytest.raises(ValueError, match="note 1"):
        f.SaIdentifierUpdateConfirm(existing_sa_id=SA, new_sa_id=SA2, result=Acceptance.ACCEPTED)
    with pytest.raises(ValueError, match="note 2"):
        check_reply_to(
            request, f.SaIdentifierUpdateConfirm(new_sa_id=other, result=Acceptance.ACCEPTED)
        )
    with pytest.raises(ValueError, match="note 2"):
        check_reply_to(
            request,
            f.SaIdentifierUpdateConfirm(
                existing_sa_id=SA, new_sa_id=SA2, result=Acceptance.REJECTED
            ),
        )


def test_table_38_existing_identifier_when_accepted() -> None:
    f.SaIdentifierUpdateResponse(new_sa_id=SA2, result=Acceptance.REJECTED)
    with pytest.raises(ValueError, match="existing_sa_id is required"):
        f.SaIdentifierUpdateResponse(new_sa_id=SA2, result=Acceptance.ACCEPTED)
    with pytest.raises(ValueError, match="existing_sa_id must be absent"):
        f.SaIdentifierUpdateResponse(existing_sa_id=SA, new_sa_id=SA2, result=Acceptance.REJECTED)


def test_table_39_key_update() -> None:
    plain = f.SaKeyUpdate(sa_id=SA, new_keying_material=MATERIAL)
    asking = f.SaKeyUpdate(
        sa_id=SA, new_keying_material=MATERIAL, responder_keying_material_requested=True
    )
    assert "responder_keying_material_requested" not in plain.elements()
    assert asking.elements()["responder_keying_material_requested"] is True
    given = f.SaKeyUpdateConfirm(
        sa_id=SA, result=Acceptance.ACCEPTED, responder_keying_material=MATERIAL
    )
    bare = f.SaKeyUpdateConfirm(sa_id=SA, result=Acceptance.ACCEPTED)
    check_reply_to(asking, given)
    check_reply_to(plain, bare)
    with pytest.raises(ValueError, match="note 2"):
        check_reply_to(asking, bare)
    with pytest.raises(ValueError, match="note 2"):
        check_reply_to(plain, given)
    for reason in KeyUpdateRejection:
        rejected = f.SaKeyUpdateConfirm(
            sa_id=SA, result=Acceptance.REJECTED, rejection_reason=reason
        )
        check_reply_to(asking, rejected)
    with pytest.raises(ValueError, match="note 3"):
        f.SaKeyUpdateConfirm(sa_id=SA, result=Acceptance.REJECTED)
    with pytest.raises(ValueError, match="note 3"):
        f.SaKeyUpdateConfirm(
            sa_id=SA,
            result=Acceptance.ACCEPTED,
            rejection_reason=KeyUpdateRejection.DECRYPTION_FAILURE,
        )


def test_table_40_two_rejection_reasons_when_rejected() -> None:
    for reason in (
        KeyUpdateRejection.DECRYPTION_FAILURE,
        KeyUpdateRejection.UNWILLING_TO_CHANGE_KEY,
    ):
        f.SaKeyUpdateResponse(sa_id=SA, result=Acceptance.REJECTED, rejection_reason=reason)
    with pytest.raises(ValueError, match="not allowed in this table"):
        f.SaKeyUpdateResponse(
            sa_id=SA,
            result=Acceptance.REJECTED,
            rejection_reason=KeyUpdateRejection.UNABLE_TO_ENCRYPT_WITH_INITIATOR_KEY,
        )
    with pytest.raises(ValueError, match="rejection_reason is required"):
        f.SaKeyUpdateResponse(sa_id=SA, result=Acceptance.REJECTED)
    with pytest.raises(ValueError, match="rejection_reason must be absent"):
        f.SaKeyUpdateResponse(
            sa_id=SA,
            result=Acceptance.ACCEPTED,
            rejection_reason=KeyUpdateRejection.DECRYPTION_FAILURE,
        )


@pytest.mark.parametrize("operation", list(UpdatedOperation))
def test_table_41_new_identifier_exactly_when_it_changed(operation: UpdatedOperation) -> None:
    if operation is UpdatedOperation.SA_KEYS_UPDATED:
        f.SaUpdated(existing_sa_id=SA, update_operation=operation)
        with pytest.raises(ValueError, match="new_sa_id must be absent"):
            f.SaUpdated(existing_sa_id=SA, update_operation=operation, new_sa_id=SA2)
    else:
        f.SaUpdated(existing_sa_id=SA, update_operation=operation, new_sa_id=SA2)
        with pytest.raises(ValueError, match="new_sa_id is required"):
            f.SaUpdated(existing_sa_id=SA, update_operation=operation)


@pytest.mark.parametrize("cls", [f.RemoveSaConfirm, f.SaRemovalConfirm], ids=_ids)
def test_tables_42_43_rejection_reason_exactly_when_rejected(cls: type[f.Flow]) -> None:
    for reason in RemoveRejection:
        cls(sa_id=SA, result=Acceptance.REJECTED, rejection_reason=reason)
    with pytest.raises(ValueError, match="rejection_reason is required"):
        cls(sa_id=SA, result=Acceptance.REJECTED)
    with pytest.raises(ValueError, match="rejection_reason must be absent"):
        cls(
            sa_id=SA,
            result=Acceptance.ACCEPTED,
            rejection_reason=RemoveRejection.UNKNOWN_SA_IDENTIFIER,
        )


# -- pairing requests and confirms -------------------------------------------------------
def test_check_reply_to_pairs_and_identifiers() -> None:
    received = f.InitiateSaReceived(initiator_id=INITIATOR, sa_id=SA)
    check_reply_to(received, f.InitiateSaReceivedConfirm(sa_id=SA, result=Result.SUCCESS))
    with pytest.raises(ValueError, match="does not answer"):
        check_reply_to(received, f.InitiateSaReceivedConfirm(sa_id=SA2, result=Result.SUCCESS))
    with pytest.raises(ValueError, match="does not answer"):
        check_reply_to(received, f.RemoveSaConfirm(sa_id=SA, result=Acceptance.ACCEPTED))
    with pytest.raises(ValueError, match="not the request of a confirmed flow"):
        check_reply_to(
            f.SaRemoved(sa_id=SA), f.RemoveSaConfirm(sa_id=SA, result=Acceptance.ACCEPTED)
        )
    # Table 42 vs 43: the same shape, not the same flow.
    with pytest.raises(ValueError, match="does not answer"):
        check_reply_to(
            f.RemoveSa(sa_id=SA), f.SaRemovalConfirm(sa_id=SA, result=Acceptance.ACCEPTED)
        )
    check_reply_to(f.SaRemoval(sa_id=SA), f.SaRemovalConfirm(sa_id=SA, result=Acceptance.ACCEPTED))
    update = f.UpdateSa(existing_sa_id=SA, update_operation=UpdateOperation.UPDATE_SA_KEYS)
    with pytest.raises(ValueError, match="does not answer"):
        check_reply_to(update, f.UpdateSaConfirm(existing_sa_id=SA2, result=Acceptance.REJECTED))


def test_table_25_the_chosen_sa_was_offered() -> None:
    offer = f.SaParameterEstablishment(possible_security_associations=[PARAMS])  # type: ignore[arg-type]
    assert offer.possible_security_associations == (PARAMS,)
    check_reply_to(
        offer,
        f.SaParameterEstablishmentConfirm(
            result=Result.SUCCESS, security_association=PARAMS, sa_id=SA
        ),
    )
    with pytest.raises(ValueError, match="not among those offered"):
        check_reply_to(
            offer,
            f.SaParameterEstablishmentConfirm(
                result=Result.SUCCESS, security_association=OTHER_PARAMS, sa_id=SA
            ),
        )


def test_secrets_stay_out_of_repr() -> None:
    secret = b"\x8a\x17very-secret-material\x00"
    material = KeyingMaterial(kind=KeyingMaterialKind.DERIVATION_STRING, value=secret)
    flows = [
        f.SaKeyUpdate(sa_id=SA, new_keying_material=material),
        f.SaKeyUpdateConfirm(
            sa_id=SA, result=Acceptance.ACCEPTED, responder_keying_material=material
        ),
        f.InitiatorKeyingMaterial(sa_id=SA, initiator_keying_material=secret),
        f.ResponderKeyingMaterialConfirm(sa_id=SA, response=secret),
        f.ResponderAuthorizationChallengeConfirm(sa_id=SA, response=secret),
    ]
    for flow in flows:
        text = repr(flow)
        assert repr(secret) not in text and "very-secret" not in text


def test_readings_cited_from_the_flows_exist() -> None:
    # The flows cite their readings of the seed's slips; docs/readings.md has them.
    root = Path(__file__).resolve().parent.parent
    readings = (root / "docs" / "readings.md").read_text(encoding="utf-8")
    source = "".join(p.read_text() for p in (root / "src/m2msec/sa/flows").glob("*.py"))
    for cited in set(re.findall(r"A-\d\d", source)):
        assert f"## {cited} " in readings
