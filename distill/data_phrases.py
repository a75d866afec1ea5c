"""Phrase banks and templates for :mod:`distill.data` (vocabulary only, no logic).

Placeholders: ``{ALL_CAPS}`` are PII values (see ``_PiiFactory.generators`` in ``distill.data``);
``{lower}`` / ``{Capitalised}`` take a filler of that name from the record's topic or from
``GENERIC_FILLERS``. Topic vocabulary is deliberately disjoint between topics so the topic is learnable.
Public templates and ``PUBLIC_GENERAL`` must never contain PII placeholders or id-shaped numbers.
"""

from __future__ import annotations

Fillers = dict[str, tuple[str, ...]]

GENERIC_FILLERS: Fillers = {
    "weeks": ("2", "3", "4", "6", "8"),
    "days": ("2", "3", "5", "7", "10", "14"),
    "status": ("resolved", "pending customer reply", "escalated to tier 2",
               "closed after confirmation", "waiting on a second review"),
    "version": ("2.4.1", "3.0.2", "3.1.0", "4.2.7", "1.9.12"),
    "time": ("08:00", "09:30", "12:15", "14:45", "17:00", "20:00"),
}

CLINICAL_TOPICS: tuple[tuple[str, Fillers], ...] = (
    ("cardiology", {
        "dept": ("cardiology", "the heart clinic"),
        "complaint": ("intermittent chest pain on exertion", "palpitations at night",
                      "shortness of breath when climbing stairs", "swelling of both ankles"),
        "finding": ("blood pressure was 148/92", "the rhythm was irregular on auscultation",
                    "the ECG showed sinus rhythm with occasional ectopic beats",
                    "a soft systolic murmur was heard"),
        "plan": ("start metoprolol 25 mg twice daily", "order an echocardiogram",
                 "repeat the lipid panel in 6 weeks", "reduce salt intake and log blood pressure"),
        "med": ("lisinopril 10 mg daily", "atorvastatin 40 mg at night", "aspirin 81 mg daily"),
        "history": ("hypertension", "a prior myocardial infarction", "atrial fibrillation"),
    }),
    ("respiratory", {
        "dept": ("pulmonology", "the respiratory clinic"),
        "complaint": ("a persistent dry cough", "wheezing after exercise", "night sweats and a productive cough",
                      "worsening breathlessness"),
        "finding": ("oxygen saturation was 94% on room air", "scattered wheezes were heard bilaterally",
                    "the chest X-ray showed no consolidation", "peak flow was 320 L/min"),
        "plan": ("increase the inhaled steroid dose", "arrange spirometry", "start a 5-day course of prednisolone",
                 "review inhaler technique"),
        "med": ("salbutamol inhaler as needed", "budesonide 200 mcg twice daily", "montelukast 10 mg at night"),
        "history": ("asthma since childhood", "COPD", "recurrent bronchitis"),
    }),
    ("orthopedics", {
        "dept": ("orthopedics", "the fracture clinic"),
        "complaint": ("right knee pain after a fall", "lower back pain radiating to the left leg",
                      "a stiff and painful shoulder", "wrist swelling after a sports injury"),
        "finding": ("range of motion was reduced by about 30%", "there was tenderness over the joint line",
                    "the X-ray showed a non-displaced fracture", "straight leg raise was positive at 45 degrees"),
        "plan": ("refer to physiotherapy", "apply a cast for 6 weeks", "order an MRI of the lumbar spine",
                 "use ibuprofen 400 mg with food as needed"),
        "med": ("paracetamol 1 g four times daily", "naproxen 250 mg twice daily", "a topical NSAID gel"),
        "history": ("osteoarthritis", "a previous ACL repair", "osteoporosis"),
    }),
    ("dermatology", {
        "dept": ("dermatology", "the skin clinic"),
        "complaint": ("an itchy rash on both forearms", "a changing mole on the back",
                      "dry scaly patches on the elbows", "recurrent hives"),
        "finding": ("there were erythematous plaques with silvery scale", "dermoscopy showed an irregular border",
                    "the rash was papular and symmetric", "no signs of secondary infection were seen"),
        "plan": ("apply hydrocortisone 1% cream twice daily", "book an excision biopsy",
                 "use a fragrance-free emollient", "start a 2-week trial of cetirizine"),
        "med": ("cetirizine 10 mg daily", "clobetasol ointment", "an emollient cream"),
        "history": ("eczema", "psoriasis", "contact dermatitis"),
    }),
    ("gastroenterology", {
        "dept": ("gastroenterology", "the GI clinic"),
        "complaint": ("epigastric pain after meals", "intermittent diarrhea", "heartburn at night",
                      "bloating and early satiety"),
        "finding": ("the abdomen was soft with mild epigastric tenderness", "bowel sounds were normal",
                    "the liver edge was not palpable", "stool tests were negative"),
        "plan": ("start omeprazole 20 mg before breakfast", "arrange an upper endoscopy",
                 "follow a low-FODMAP diet for 4 weeks", "check celiac serology"),
        "med": ("omeprazole 20 mg daily", "loperamide as needed", "an antacid after meals"),
        "history": ("reflux disease", "irritable bowel syndrome", "gallstones"),
    }),
    ("neurology", {
        "dept": ("neurology", "the headache clinic"),
        "complaint": ("recurrent migraines with aura", "numbness in the left hand", "episodes of dizziness",
                      "a tremor in both hands"),
        "finding": ("cranial nerves were intact", "reflexes were symmetric at 2+",
                    "the gait was steady", "fine touch was reduced in the left fingers"),
        "plan": ("keep a headache diary", "order nerve conduction studies", "start propranolol 40 mg daily",
                 "arrange a brain MRI"),
        "med": ("sumatriptan 50 mg as needed", "amitriptyline 10 mg at night", "magnesium supplements"),
        "history": ("migraine", "a prior concussion", "epilepsy"),
    }),
)

SUPPORT_TOPICS: tuple[tuple[str, Fillers], ...] = (
    ("billing", {
        "area": ("billing", "invoices and payments"),
        "issue": ("a duplicate charge on the latest invoice", "an unexpected late fee",
                  "a payment that failed twice", "tax missing from the receipt"),
        "detail": ("the invoice total was 49.99 USD instead of 24.99 USD", "the charge appeared twice on one day",
                   "the bank statement shows the payment as pending"),
        "action": ("reversed the duplicate charge", "waived the late fee", "sent a corrected invoice",
                   "updated the billing address"),
    }),
    ("account_access", {
        "area": ("account access", "login and security"),
        "issue": ("being locked out after too many login attempts", "a password reset link that expired",
                  "two-factor codes that never arrive", "an unknown sign-in alert"),
        "detail": ("the reset email arrived after 30 minutes",
                   "the authenticator app shows a 6-digit code that is rejected",
                   "the sign-in came from a new device"),
        "action": ("unlocked the account and reset the password", "re-sent the verification code",
                   "reset two-factor authentication", "signed out all other sessions"),
    }),
    ("shipping", {
        "area": ("shipping", "orders and delivery"),
        "issue": ("a package that has not arrived after 10 days", "a parcel delivered to the wrong address",
                  "a damaged box on arrival", "tracking that has not updated since Monday"),
        "detail": ("the courier marked it delivered at 14:45", "the box was crushed on one side",
                   "the tracking page shows the parcel at the depot"),
        "action": ("opened a claim with the courier", "shipped a replacement by express post",
                   "arranged a redelivery", "corrected the delivery address"),
    }),
    ("technical", {
        "area": ("technical support", "the mobile app"),
        "issue": ("the app crashing on startup", "sync errors between the phone and the laptop",
                  "error 500 when uploading files", "notifications that stopped working"),
        "detail": ("the crash started after the update to version 4.2.7", "clearing the cache did not help",
                   "the log shows a timeout after 30 seconds"),
        "action": ("asked for logs and reproduced the crash", "rolled the account back to version 4.2.6",
                   "filed a bug with engineering", "walked through reinstalling the app"),
    }),
    ("refunds", {
        "area": ("returns and refunds", "refunds"),
        "issue": ("a refund that has not been received", "returning an item that does not fit",
                  "a partial refund for a missing part", "a return label that will not print"),
        "detail": ("the return was dropped off 2 weeks ago", "the refund should be 35.00 USD",
                   "the item is unused and in its original packaging"),
        "action": ("issued a full refund", "emailed a new return label", "approved a partial refund of 12.50 USD",
                   "extended the return window by 14 days"),
    }),
    ("subscription", {
        "area": ("subscriptions", "plans and upgrades"),
        "issue": ("cancelling the premium plan", "a renewal charged at the old price",
                  "switching from monthly to annual billing", "a family plan member who cannot join"),
        "detail": ("the renewal notice arrived only 1 day before", "the plan page still shows the basic tier",
                   "the upgrade was charged but features are missing"),
        "action": ("cancelled the renewal", "applied the annual discount", "moved the plan to the family tier",
                   "refreshed the plan entitlements"),
    }),
)

CLINICAL_TEMPLATES: tuple[str, ...] = (
    ("Patient {PERSON}, DOB {DOB}, seen in {dept} for {complaint}. On exam, {finding}. Plan: {plan}. "
     "Call {PHONE} with questions."),
    ("{Dept} follow-up. MRN {ACCOUNT}. {PERSON} reports {complaint} for {days} days. On {med}. "
     "We will {plan}. Signed, Dr. {CLINICIAN}."),
    ("Referral: {PERSON} (SSN {SSN}) to {dept} for {complaint}. History of {history}. "
     "Contact {PHONE} or {EMAIL}."),
    ("Discharge summary. {PERSON} admitted {DATE} with {complaint}. {Finding}. Discharged on {med}. "
     "Copay card {CREDIT_CARD}."),
    ("Phone note {DATE}. {PERSON} called from {PHONE} about {complaint}. Advised to {plan}. "
     "Routed to Dr. {CLINICIAN}."),
    ("Intake for {PERSON}, member ID {ACCOUNT}. Chief complaint: {complaint}. History of {history}. "
     "Plan: {plan}. Portal email {EMAIL}."),
)

CLINICAL_EXTRAS: tuple[str, ...] = (
    "Emergency contact: {CONTACT}, {PHONE}.",
    "Vitals at {time}; {finding}.",
    "Education provided.",
    "Next visit {DATE}.",
    "Consent signed by {LAST}.",
    "Results to {EMAIL}.",
)

SUPPORT_TEMPLATES: tuple[str, ...] = (
    ("Ticket from {PERSON} <{EMAIL}> about {area}: {issue}. {Detail}. Account {ACCOUNT}. "
     "Agent {AGENT} {action}. Status: {status}."),
    ("Hi, this is {PERSON}. I am writing about {issue}. {Detail}. My account number is {ACCOUNT}. "
     "Thanks."),
    ("Call log {DATE}. {PERSON} called from {PHONE} about {issue}. Verified with SSN {SSN}. "
     "Agent {AGENT} {action}."),
    ("Chat summary. {PERSON} ({EMAIL}) asked about {issue}. Card on file {CREDIT_CARD} checked. "
     "Agent {AGENT} {action}."),
    ("Escalation for {area}. Customer {PERSON}, phone {PHONE}, email {EMAIL}. {Issue}. {Detail}. "
     "Status: {status}."),
    "Web form from {PERSON}, {DATE}. Topic: {area}. {Issue}, account {ACCOUNT}. Agent {AGENT} {action}.",
)

SUPPORT_EXTRAS: tuple[str, ...] = (
    "Callback at {PHONE}.",
    "Prefers email: {EMAIL}.",
    "Previous ticket was {status}.",
    "Secondary contact: {CONTACT}.",
    "Last four digits confirmed.",
    "Reply wanted before {time}.",
)

CLINICAL_PUBLIC_TEMPLATES: tuple[str, ...] = (
    ("The patient was seen in {dept} for {complaint}. On exam, {finding}. Plan: {plan}. "
     "Follow up in {weeks} weeks."),
    "{Dept} guidance: patients with {complaint} are often asked to {plan}. A typical medication is {med}.",
    "{Dept} note template. Past history of {history}. {Finding}. We will {plan}. Follow-up in {weeks} weeks.",
    "Dosing reminder: take {med}. Doses at {time} and 20:00 work well for most adults.",
    "Referral criteria for {dept}: {complaint} lasting more than {days} days, or {history} with new symptoms.",
    "Discharge checklist for {dept}: confirm {med}, explain how to {plan}, and book a follow-up in {weeks} weeks.",
)

SUPPORT_PUBLIC_TEMPLATES: tuple[str, ...] = (
    "A customer reported {issue}. {Detail}. The agent {action}. Status: {status}.",
    "Knowledge base article on {area}: when a customer reports {issue}, the usual fix is that the agent {action}.",
    "Release notes for version {version}: improved handling of {area} requests and fewer cases of {issue}.",
    "Team update on {area}: most tickets this week were about {issue}. {Detail}.",
    ("Macro for {area}: thank the customer, confirm the account number and phone on file, then explain "
     "what happens next. Tickets like this are usually {status}."),
    "Escalation guide for {area}: escalate {issue} if it is still open after {days} days.",
)

PUBLIC_GENERAL: tuple[str, ...] = (
    "Never paste a full SSN, card number, MRN, DOB, email address or phone number into a chat message.",
    "Questions can go to the care team through the portal, or tag @care-team in the forum.",
    "Support replies within 24 hours; mention @support in the community forum for faster answers.",
    "Clinic hours are 08:00 to 17:00, Monday to Friday, with a nurse line until 20:00.",
    "The e-mail and phone settings live under Account, then Contact details.",
    "Version 3.1.0 of the portal adds a dark mode and a re-designed inbox.",
    "Typical adult doses are 5 mg, 10 mg or 2.5 mg; always check the label.",
    "A normal resting pulse is 60-100 beats per minute and a normal temperature is about 37.0 C.",
    "Agents verify identity with the last four digits only, never the full number.",
    "Patients should bring a list of current medications and allergies to every visit.",
)
