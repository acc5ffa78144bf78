// Starts Swagger UI on /api/v1/docs (mercia.api.docs) from the bundled assets.
document.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("swagger-ui");
  // global from swagger-ui-bundle.js
  window.SwaggerUIBundle({ url: root.dataset.openapi, domNode: root, deepLinking: true });
});
