/**
 * Keyturn order connector for NetSuite: posts a Sales Order to Keyturn once it is
 * approved (custscript_keyturn_post_on = approval, the default: Pending Fulfillment
 * or later) or billed (= billing: deploy this script on Invoice too; an invoice
 * created from a Sales Order posts that order). Keyturn's answer is written on the
 * order (custbody_keyturn_status, custbody_keyturn_message); a failed post is
 * retried by keyturn_retry_ss.js, since a user event does not run again by itself.
 *
 * Every save of a posted order posts it again: Keyturn replays an order it has
 * fulfilled (same internal id and custbody_keyturn_revision), so that is safe.
 *
 * @NApiVersion 2.1
 * @NScriptType UserEventScript
 * @NModuleScope SameAccount
 */
define(['N/log', 'N/runtime', './keyturn_post'], (log, runtime, keyturn) => {
    /** The Sales Order an event posts, or null. */
    function salesOrderOf(context) {
        const types = context.UserEventType;
        const saved = context.newRecord;
        const postOn = runtime.getCurrentScript().getParameter({ name: 'custscript_keyturn_post_on' });
        if (saved.type === 'invoice') {
            // Billing: the invoice's source order, whatever its status now.
            if (postOn !== 'billing' || context.type !== types.CREATE) {
                return null;
            }
            return saved.getValue({ fieldId: 'createdfrom' }) || null;
        }
        if ([types.CREATE, types.EDIT, types.APPROVE].indexOf(context.type) < 0) {
            return null; // xedit: our own write-back of the status, and inline edits
        }
        return keyturn.isPostable(saved) ? saved.id : null;
    }

    /**
     * @param {Object} context
     * @param {Record} context.newRecord
     * @param {string} context.type
     */
    const afterSubmit = (context) => {
        const salesOrderId = salesOrderOf(context);
        if (!salesOrderId) {
            return;
        }
        try {
            keyturn.postSalesOrder(salesOrderId);
        } catch (e) {
            // Never fail the user's save: the order stays without a Keyturn status.
            log.error({ title: `Keyturn: sales order ${salesOrderId} not posted`, details: `${e.name}: ${e.message}` });
        }
    };

    return { afterSubmit };
});
