"""The outbound message as Salesforce posts it, read with defusedxml, the organization id
in either form, and the two answers Salesforce understands. Pure: no network."""

from __future__ import annotations

import defusedxml.ElementTree as SafeET
import pytest
from salesforce_harness import Notified, id18, outbound_message, read_answer

from keyturn.client.connectors.salesforce_message import (
    Failure,
    UnusableMessage,
    ack_reply,
    fault_reply,
    parse_notifications,
    salesforce_id_15,
    same_salesforce_id,
)

# Ids as they appear in Salesforce's own payloads, each with its 15-character form.
REAL_IDS = [
    ("00D7F00000107XsUAI", "00D7F00000107Xs"),
    ("0067F000003pmdWQAQ", "0067F000003pmdW"),
    ("04l7F000008aeAyQAI", "04l7F000008aeAy"),
    ("0017F000007ydJmQAI", "0017F000007ydJm"),
]

# A message as Salesforce posts it (one Opportunity, Send Session ID unticked).
POSTED = b"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00D7F00000107XsUAI</OrganizationId>
   <ActionId>04k7F0000008V3hQAE</ActionId>
   <SessionId xsi:nil="true"/>
   <EnterpriseUrl>https://ap5.salesforce.com/services/Soap/c/47.0/00D7F00000107Xs</EnterpriseUrl>
   <PartnerUrl>https://ap5.salesforce.com/services/Soap/u/47.0/00D7F00000107Xs</PartnerUrl>
   <Notification>
    <Id>04l7F000008aeAyQAI</Id>
    <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>0067F000003pmdWQAQ</sf:Id>
     <sf:AccountId>0017F000007ydJmQAI</sf:AccountId>
     <sf:Name>Express Logistics SLA</sf:Name>
     <sf:StageName>Closed Won</sf:StageName>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>"""


@pytest.mark.parametrize(("long", "short"), REAL_IDS)
def test_both_forms_of_an_id_name_the_same_record(long: str, short: str) -> None:
    assert id18(short) == long  # the harness's checksum agrees with Salesforce's
    assert salesforce_id_15(long) == salesforce_id_15(short) == short
    assert same_salesforce_id(long, short)
    assert same_salesforce_id(short, long)
    assert salesforce_id_15(short.lower() + long[15:]) is None  # the suffix records the case


def test_what_is_no_id_or_another_record() -> None:
    assert salesforce_id_15("00D7F00000107XsAAA") is None  # the checksum does not fit
    assert salesforce_id_15("00D7F00000107X") is None
    assert salesforce_id_15("00D7F00000107X'") is None
    assert not same_salesforce_id("00D7F00000107Xs", "00D7F00000107XS")  # case matters
    assert not same_salesforce_id("", "")


def test_a_posted_message_is_read() -> None:
    message = parse_notifications(POSTED)
    assert (message.organization_id, message.action_id, message.session_id) == (
        "00D7F00000107XsUAI",
        "04k7F0000008V3hQAE",
        None,
    )
    assert message.partner_url.startswith("https://ap5.salesforce.com/services/Soap/u/47.0/")
    [notification] = message.notifications
    assert (notification.notification_id, notification.object_type, notification.object_id) == (
        "04l7F000008aeAyQAI",
        "Opportunity",
        "0067F000003pmdWQAQ",
    )
    assert notification.fields["StageName"] == "Closed Won"


def test_the_harness_posts_the_same_shape() -> None:
    body = outbound_message(
        [Notified(id18("801Kt0000000001"), fields={"Type": "New"})] * 3,
        instance_url="https://acme.my.salesforce.com",
        session_id="00D!session",
    )
    message = parse_notifications(body)
    assert message.session_id == "00D!session"
    assert [n.object_type for n in message.notifications] == ["Order"] * 3


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            POSTED.replace(b"<Notification>", b"<Other>").replace(b"</Notification>", b"</Other>"),
            "0 notifications",
        ),
        (POSTED.replace(b"00D7F00000107XsUAI", b"00D-not-an-id"), "not a Salesforce id"),
        (POSTED.replace(b"<sf:Id>0067F000003pmdWQAQ</sf:Id>", b""), "sObject Id"),
        (POSTED.replace(b"soap/envelope/", b"soap-envelope/"), "not a SOAP 1.1 envelope"),
        (b'<!DOCTYPE x [<!ENTITY a "a">]><x>&a;</x>', "not an XML document Keyturn reads"),
    ],
)
def test_what_is_no_outbound_message(body: bytes, why: str) -> None:
    with pytest.raises(UnusableMessage, match=why):
        parse_notifications(body)


def test_more_than_100_notifications_are_not_salesforce_s() -> None:
    body = outbound_message(
        [Notified(id18("801Kt0000000001"))] * 101, instance_url="https://x", session_id=None
    )
    with pytest.raises(UnusableMessage, match="101 notifications"):
        parse_notifications(body)


def test_the_ack_is_what_the_wsdl_declares() -> None:
    reply = ack_reply()
    assert (reply.status, reply.content_type) == (200, "text/xml; charset=utf-8")
    envelope = SafeET.fromstring(reply.body)
    response = envelope.find(
        "{http://schemas.xmlsoap.org/soap/envelope/}Body/"
        "{http://soap.sforce.com/2005/09/outbound}notificationsResponse"
    )
    assert response is not None
    assert [(child.tag, child.text) for child in response] == [
        ("{http://soap.sforce.com/2005/09/outbound}Ack", "true")
    ]


def test_a_fault_names_each_failure() -> None:
    failures = [Failure("801Kt0000000001AAA", "PRODUCT_NOT_MAPPED", "code 'X' & more", False)]
    reply = fault_reply("did not fulfil 1 of 1", failures, client=False)
    answer = read_answer(reply.status, reply.content_type, reply.body)
    assert (answer.status, answer.ack, answer.faultcode, answer.faultstring) == (
        500,
        False,
        "soapenv:Server",
        "did not fulfil 1 of 1",
    )
    assert [(f.object_id, f.reason, f.temporary, f.message) for f in answer.failures] == [
        ("801Kt0000000001AAA", "PRODUCT_NOT_MAPPED", False, "code 'X' & more")
    ]
