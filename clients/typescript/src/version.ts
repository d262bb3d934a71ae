/** The SDK's version (package.json's; a test checks they agree). Sent as `x-flowstate-client`. */
export const VERSION = "0.1.0";
