// Drag and drop onto the label, the chosen file's name shown once, and a file over the upload
// limit refused before it is sent; the file input keeps working without this script.
(function () {
  var drop = document.getElementById("drop");
  var input = document.getElementById("image");
  var name = document.getElementById("drop-file");
  var error = document.getElementById("upload-error");
  var form = document.getElementById("upload-form");
  if (!drop || !input) return;
  var limit = parseInt(input.getAttribute("data-max-bytes"), 10) || 0;
  input.classList.add("enhanced"); // the label shows the name: the native control is hidden
  function tooLarge() {
    return limit > 0 && input.files.length > 0 && input.files[0].size > limit;
  }
  function show() {
    name.textContent = input.files.length ? input.files[0].name : "";
    if (tooLarge()) {
      error.textContent = "This file is larger than " + Math.floor(limit / 1048576) +
        " MB, the upload limit. Choose a smaller file (a JPEG or PNG export of the image).";
      error.hidden = false;
    } else if (error.getAttribute("data-from") === "size") {
      error.hidden = true;
    }
    if (tooLarge()) error.setAttribute("data-from", "size");
  }
  input.addEventListener("change", show);
  form.addEventListener("submit", function (e) {
    if (tooLarge()) { e.preventDefault(); show(); }
  });
  ["dragenter", "dragover"].forEach(function (type) {
    drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (type) {
    drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.remove("over"); });
  });
  drop.addEventListener("drop", function (e) {
    if (e.dataTransfer && e.dataTransfer.files.length) { input.files = e.dataTransfer.files; show(); }
  });
})();
