// The registry pages' only script (served from /registry/static/pages.js; the CSP allows no inline script).
// Progressive: every page works without it. It adds copy buttons to the connector snippets and shows a
// chosen server.json file in the text area before it is submitted.
(function () {
  "use strict";

  function copyButtons() {
    var buttons = document.querySelectorAll("button[data-copy]");
    Array.prototype.forEach.call(buttons, function (button) {
      if (!navigator.clipboard) return;
      button.hidden = false;
      button.addEventListener("click", function () {
        var source = document.getElementById(button.getAttribute("data-copy"));
        if (!source) return;
        var label = button.textContent;
        navigator.clipboard.writeText(source.textContent).then(function () {
          button.textContent = "Copied";
          window.setTimeout(function () { button.textContent = label; }, 1500);
        });
      });
    });
  }

  function filePreview() {
    var inputs = document.querySelectorAll("input[type=file][data-preview]");
    Array.prototype.forEach.call(inputs, function (input) {
      input.addEventListener("change", function () {
        var target = document.getElementById(input.getAttribute("data-preview"));
        var file = input.files && input.files[0];
        if (!target || !file || file.size > 1048576 || !file.text) return;
        file.text().then(function (text) { target.value = text; });
      });
    });
  }

  function focusError() {
    var error = document.getElementById("page-error");
    if (error) {
      error.setAttribute("tabindex", "-1");
      error.focus();
    }
  }

  copyButtons();
  filePreview();
  focusError();
})();
