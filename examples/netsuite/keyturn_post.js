/**
 * Keyturn order connector for NetSuite: the part the user-event and the retry
 * script share. It reads a Sales Order, posts it to `keyturn connect netsuite`
 * signed with an API secret, and writes the answer back onto the order, so that
 * the order itself shows whether Keyturn fulfilled it, and why not.
 *
 * Signature: HMAC-SHA256 over `TIMESTAMP.BODY` (Unix seconds, a dot, the exact
 * body), keyed with the API secret's text (UTF-8), sent as
 * `X-Keyturn-Timestamp: TIMESTAMP` and `X-Keyturn-Signature: v1=HEX`.
 *
 * Fields (create them as custom transaction body / column fields):
 *   custbody_keyturn_action        create | renew | add-seats | remove-seats | switch | cancel
 *   custbody_keyturn_subscription  the subscription a later order changes (the internal id of the
 *                                  Sales Order that created it, or your contract id)
 *   custbody_keyturn_revision      the change marker: raise it to send a changed order again
 *   custcol_keyturn_action         per line, overrides the body action
 *   custcol_keyturn_subscription   per line, overrides the body subscription
 *   custbody_keyturn_status        written back: fulfilled | failed
 *   custbody_keyturn_message       written back: what Keyturn answered
 * custbody_order_type (Contract Renewals SuiteApp) is sent too: the connector reads
 * Contract-New / Renewal / Upsell / Downsell from it when no action is set.
 *
 * @NApiVersion 2.1
 * @NModuleScope SameAccount
 */
define(['N/record', 'N/https', 'N/crypto', 'N/encode', 'N/runtime', 'N/log'], (
    record,
    https,
    crypto,
    encode,
    runtime,
    log
) => {
    const PARAM_URL = 'custscript_keyturn_url';
    const PARAM_SECRET = 'custscript_keyturn_secret';
    const PARAM_POST_ON = 'custscript_keyturn_post_on';
    const DEFAULT_SECRET = 'custsecret_keyturn_netsuite';
    const STATUS = 'custbody_keyturn_status';
    const MESSAGE = 'custbody_keyturn_message';
    const FULFILLED = 'fulfilled';
    const FAILED = 'failed';
    const MESSAGE_LIMIT = 3900; // a Text Area holds 4000 characters
    // orderstatus: B Pending Fulfillment, D Partially Fulfilled, E Pending Billing/Partially
    // Fulfilled, F Pending Billing, G Billed. A Pending Approval, C Cancelled, H Closed never post.
    const POSTED_STATUSES = {
        approval: ['B', 'D', 'E', 'F', 'G'],
        billing: ['G'],
    };

    /** The deployment's parameter, or a default. */
    function parameter(name, fallback) {
        const value = runtime.getCurrentScript().getParameter({ name: name });
        return value === null || value === undefined || value === '' ? fallback : value;
    }

    /** Whether the order's status is one this deployment posts (custscript_keyturn_post_on). */
    function isPostable(salesOrder) {
        const postOn = parameter(PARAM_POST_ON, 'approval');
        const statuses = POSTED_STATUSES[postOn] || POSTED_STATUSES.approval;
        return statuses.indexOf(String(salesOrder.getValue({ fieldId: 'orderstatus' }))) >= 0;
    }

    function text(value) {
        return value === null || value === undefined ? '' : String(value);
    }

    /** The order as Keyturn reads it: ids, customer, and each item line with its fields. */
    function orderPayload(salesOrder) {
        const lines = [];
        const count = salesOrder.getLineCount({ sublistId: 'item' });
        for (let line = 0; line < count; line += 1) {
            const value = (fieldId) =>
                salesOrder.getSublistValue({ sublistId: 'item', fieldId: fieldId, line: line });
            lines.push({
                line: text(value('line')),
                item: text(value('item')),
                itemType: text(value('itemtype')),
                quantity: Number(value('quantity') || 0),
                action: text(value('custcol_keyturn_action')),
                subscription: text(value('custcol_keyturn_subscription')),
            });
        }
        const body = (fieldId) => text(salesOrder.getValue({ fieldId: fieldId }));
        return {
            recordType: 'salesorder',
            id: text(salesOrder.id),
            tranId: body('tranid'),
            status: body('orderstatus'),
            revision: body('custbody_keyturn_revision'),
            action: body('custbody_keyturn_action'),
            orderType: body('custbody_order_type'),
            subscription: body('custbody_keyturn_subscription'),
            customer: {
                id: body('entity'),
                name: text(salesOrder.getText({ fieldId: 'entity' })),
                email: body('email'),
            },
            lines: lines,
        };
    }

    /** The signature headers of `body`, with the API secret (never read in clear). */
    function signatureHeaders(body) {
        const timestamp = String(Math.floor(Date.now() / 1000));
        const key = crypto.createSecretKey({
            secret: parameter(PARAM_SECRET, DEFAULT_SECRET),
            encoding: encode.Encoding.UTF_8,
        });
        const hmac = crypto.createHmac({ algorithm: crypto.HashAlg.SHA256, key: key });
        hmac.update({ input: timestamp + '.' + body, inputEncoding: encode.Encoding.UTF_8 });
        const digest = hmac.digest({ outputEncoding: encode.Encoding.HEX });
        return {
            'Content-Type': 'application/json',
            'X-Keyturn-Timestamp': timestamp,
            'X-Keyturn-Signature': 'v1=' + digest.toLowerCase(),
        };
    }

    /** What to write on the order for Keyturn's answer (or for no answer). */
    function outcome(code, responseBody) {
        let answer = {};
        try {
            answer = JSON.parse(responseBody || '{}');
        } catch (e) {
            answer = { error: text(responseBody) };
        }
        if (code === 200 && answer.ignored) {
            return { status: FULFILLED, message: `nothing for Keyturn: ${answer.ignored}` };
        }
        if (code === 200) {
            const done = answer.replayed ? 'already fulfilled' : 'fulfilled';
            const entitlements = (answer.entitlements || []).join(', ');
            return { status: FULFILLED, message: `${done}: order ${answer.order_id}; entitlements ${entitlements}` };
        }
        const why = [answer.reason, answer.error].filter(Boolean).join(': ');
        const retry = code === 503 ? 'Keyturn unavailable, retried' : 'refused, retried once fixed';
        return { status: FAILED, message: `HTTP ${code} (${retry}): ${why}` };
    }

    /**
     * Post the Sales Order `salesOrderId` to Keyturn and write the answer on it.
     * Returns the status written: fulfilled, or failed (the retry script posts it again).
     */
    function postSalesOrder(salesOrderId) {
        const salesOrder = record.load({ type: record.Type.SALES_ORDER, id: salesOrderId });
        const body = JSON.stringify(orderPayload(salesOrder));
        let result;
        try {
            const response = https.post({
                url: parameter(PARAM_URL, ''),
                body: body,
                headers: signatureHeaders(body),
            });
            result = outcome(Number(response.code), response.body);
        } catch (e) {
            result = { status: FAILED, message: `Keyturn unreachable, retried: ${e.name}: ${e.message}` };
        }
        const message = result.message.slice(0, MESSAGE_LIMIT);
        if (result.status === FAILED) {
            log.error({ title: `Keyturn: sales order ${salesOrderId}`, details: message });
        } else {
            log.audit({ title: `Keyturn: sales order ${salesOrderId}`, details: message });
        }
        record.submitFields({
            type: record.Type.SALES_ORDER,
            id: salesOrderId,
            values: { [STATUS]: result.status, [MESSAGE]: message },
            options: { enableSourcing: false, ignoreMandatoryFields: true },
        });
        return result.status;
    }

    return {
        FAILED: FAILED,
        FULFILLED: FULFILLED,
        STATUS: STATUS,
        isPostable: isPostable,
        orderPayload: orderPayload,
        postSalesOrder: postSalesOrder,
    };
});
