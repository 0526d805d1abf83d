/*
 * The portal's small behaviours, with no inline script (the CSP forbids it):
 *  - every htmx request carries the CSRF token, from <meta name="nexus-csrf-token">;
 *  - a form marked data-reset-on-success is cleared after a successful request.
 */
(function () {
  "use strict";

  function csrfToken() {
    const element = document.querySelector('meta[name="nexus-csrf-token"]');
    return element ? element.content : "";
  }

  document.addEventListener("htmx:config:request", (event) => {
    event.detail.ctx.request.headers["X-CSRF-Token"] = csrfToken();
  });

  document.addEventListener("htmx:after:request", (event) => {
    const element = event.target;
    const response = event.detail.ctx && event.detail.ctx.response;
    if (element instanceof HTMLFormElement && element.hasAttribute("data-reset-on-success")) {
      if (response && response.status < 300) {
        element.reset();
        const error = element.querySelector(".form-error");
        if (error) error.textContent = "";
      }
    }
  });
})();
