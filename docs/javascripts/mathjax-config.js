// MathJax 3 configuration for pymdownx.arithmatex (generic mode): typeset only the spans and blocks that
// arithmatex marked, with the delimiters it writes.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",
    processHtmlClass: "arithmatex",
  },
};
