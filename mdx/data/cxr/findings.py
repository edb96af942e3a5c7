"""Names of the findings that mdx classifies, in the order used for label vectors."""

# The 14 NIH ChestX-ray14 findings, in the order of the official paper (Wang et al., 2017).
NIH_FINDINGS: tuple[str, ...] = (
  "Atelectasis",
  "Cardiomegaly",
  "Effusion",
  "Infiltration",
  "Mass",
  "Nodule",
  "Pneumonia",
  "Pneumothorax",
  "Consolidation",
  "Edema",
  "Emphysema",
  "Fibrosis",
  "Pleural_Thickening",
  "Hernia",
)

NO_FINDING = "No Finding"
